"""bench/gpu_check.sh at CPU scale (--small), as CI keeps it working: every section reports, and the catalogue's
embeddings it saves are the trained workdir's (recomputed here through the Recognizer)."""

import importlib.util
import json
import os
import subprocess

import numpy as np

from conftest import REPO
from navee_jax.data.sources import digits_catalogue
from navee_jax.recognize import Recognizer


def test_gpu_check_runs_end_to_end_at_cpu_scale(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh"), "--small", "--digits",
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    has_torch = importlib.util.find_spec("torch") is not None
    for backbone in ("resnet50", "vit_b16"):
        sides = report["train_step"][backbone]
        assert sides["navee_jax"]["images_per_s"] > 0 and sides["navee_jax"]["compile_s"] > 0
        assert ("torch" in sides) == has_torch
    assert "| ViT-B/16 |" in done.stdout and "catalogue: 1797 images" in done.stdout

    workdir = out / "short_run"
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert report["short_run"]["final_map"] == metrics["final"]["map"]
    saved = np.load(workdir / "catalogue_embeddings.npy")
    catalogue = digits_catalogue()
    assert saved.shape == (len(catalogue), report["embedding"]["dim"])
    picked = [0, 500, 1796]
    again = Recognizer.load(str(workdir)).embed([catalogue.pixels[i] for i in picked])
    np.testing.assert_allclose(saved[picked], again, rtol=1e-5, atol=1e-6)
