"""The GPU check (bench/gpu_check.sh runs it): what a user with an accelerator meets, end to end, in one report.

    python bench/gpu_check.py [--small] [--digits] [--out DIR]

1. Train-step throughput of ResNet-50 and ViT-B/16 (navee_jax's real step: triplet loss, batch-hard, AdamW;
   bench/train_step.py), beside torchvision's networks in PyTorch on the same device and batch when torch is
   installed: compile (the cold first call) and images/s. On a GPU both sides compute in bf16 (navee_jax's
   `model.compute_dtype=bfloat16`, torch's autocast); on the CPU in float32.
2. A short training run with launch.py: the fashion photos' unseen types at 224x224 (bf16 on a GPU), or the
   digits when ../shared/data is absent (or with --digits); its held-out mAP before and after.
3. The embedding of the whole catalogue with that run's model (`Recognizer`), in images/s.

--small: the same at CPU scale (32x32 images, batch 8, a few steps), which CI runs (tests/test_gpu_check.py).
Writes DIR/gpu_check.json and prints a markdown table; docs/vit.md records the numbers of a real GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.train_step import flax_step, make_batch, time_steps, torch_step  # noqa: E402
from configs.common import FASHION  # noqa: E402

BACKBONES = {"resnet50": "ResNet-50", "vit_b16": "ViT-B/16"}


def step_throughput(backbone: str, batch: int, size: int, steps: int, accelerator: bool) -> dict:
    """{side: {"compile_s", "images_per_s"}} of one train step, navee_jax and (if installed) PyTorch."""
    images, labels = make_batch(batch, size)
    run, compile_s = flax_step(images, labels, None, backbone=backbone,
                               compute_dtype="bfloat16" if accelerator else "float32")
    sides = {"navee_jax": (run, compile_s)}
    try:
        import torch  # noqa: F401  (bench/train_step imports it inside)
    except ImportError:
        print("PyTorch is not installed: navee_jax's side only (pip install 'navee-jax[torch]')")
    else:
        device = "cuda" if accelerator and torch.cuda.is_available() else "cpu"
        start = time.perf_counter()
        torch_run = torch_step(images, labels, os.cpu_count() or 1, backbone, device, bf16=device == "cuda")
        torch_run()  # the first step: cuDNN's autotuning, allocations
        sides["torch"] = (torch_run, time.perf_counter() - start)
    out = {}
    for side, (run, compile_s) in sides.items():
        run()  # warm-up after compiling
        seconds = min(time_steps(run, steps) for _ in range(3))
        out[side] = {"compile_s": round(compile_s, 2), "images_per_s": round(batch / seconds, 1)}
    return out


def short_run(workdir: str, small: bool, accelerator: bool, digits: bool) -> tuple[list[str], dict]:
    """launch.py's arguments and its metrics.json."""
    size = 32 if small else 224
    fashion = os.path.isdir(FASHION) and not digits
    spec = "configs/triplet.py:fashion_types_unseen" if fashion else "configs/triplet.py:digits"
    args = [f"--config={spec}", f"--workdir={workdir}", f"--config.data.image_size={size}",
            "--config.train.num_epochs=1", f"--config.train.steps_per_epoch={3 if small else 100}",
            f"--config.eval.episodes={20 if small else 200}"]
    if small:
        args += ["--config.model.width=16", "--config.sampler.classes_per_batch=4"]
    if accelerator:
        args.append("--config.model.compute_dtype=bfloat16")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=REPO, env=env)
    if done.returncode:
        sys.exit(f"gpu_check: the short run failed: launch.py {' '.join(args)}")
    with open(os.path.join(workdir, "metrics.json")) as f:
        return args, json.load(f)


def embed_catalogue(workdir: str, batch_size: int) -> dict:
    """Every image of the run's catalogue through `Recognizer.embed`: images/s (the first call compiles)."""
    import numpy as np

    from navee_jax.data.sources import load_catalogue
    from navee_jax.recognize import Recognizer

    rec = Recognizer.load(workdir, batch_size=batch_size)
    catalogue = load_catalogue(rec.config.data)
    images = list(catalogue.paths) if catalogue.paths is not None else list(catalogue.pixels)
    rec.embed(images[:batch_size])  # compiles
    start = time.perf_counter()
    embeddings = rec.embed(images)
    seconds = time.perf_counter() - start
    np.save(os.path.join(workdir, "catalogue_embeddings.npy"), embeddings)
    return {"images": len(images), "dim": int(embeddings.shape[1]), "images_per_s": round(len(images) / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU scale: 32x32, batch 8, a few steps (CI)")
    p.add_argument("--digits", action="store_true", help="the short run on the digits even where the fashion "
                   "photos are")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "gpu_check"))
    a = p.parse_args()
    import jax

    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    os.makedirs(a.out, exist_ok=True)
    report = {"device": f"{device.platform}: {getattr(device, 'device_kind', '')}", "jax": jax.__version__,
              "small": a.small}
    print(f"gpu_check: {report['device']} ({jax.device_count()} device(s)), jax {jax.__version__}", flush=True)
    batch, size, steps = (8, 32, 2) if a.small else (64, 224, 10)
    report["train_step"] = {}
    for backbone, name in BACKBONES.items():
        report["train_step"][backbone] = step_throughput(backbone, batch, size, steps, accelerator)
        print(f"train step {name}: {report['train_step'][backbone]}", flush=True)
    workdir = os.path.join(a.out, "short_run")
    args, metrics = short_run(workdir, a.small, accelerator, a.digits)
    report["short_run"] = {"command": "python launch.py " + " ".join(args),
                           "initial_map": metrics["initial"]["map"], "final_map": metrics["final"]["map"]}
    report["embedding"] = embed_catalogue(workdir, 64 if a.small else 256)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)

    print(f"\n{report['device']}, batch {batch} at {size}x{size}\n")
    print("| train step | navee_jax images/s (compile s) | torch images/s (first step s) | ratio |")
    print("|---|---|---|---|")
    for backbone, sides in report["train_step"].items():
        ours, theirs = sides["navee_jax"], sides.get("torch")
        cells = [f"{ours['images_per_s']} ({ours['compile_s']})",
                 f"{theirs['images_per_s']} ({theirs['compile_s']})" if theirs else "not installed",
                 f"{ours['images_per_s'] / theirs['images_per_s']:.2f}" if theirs else ""]
        print(f"| {BACKBONES[backbone]} | " + " | ".join(cells) + " |")
    r, e = report["short_run"], report["embedding"]
    print(f"\nshort run: held-out mAP {r['initial_map']:.4f} -> {r['final_map']:.4f} ({r['command']})")
    print(f"catalogue: {e['images']} images embedded ({e['dim']}-d) at {e['images_per_s']} images/s")


if __name__ == "__main__":
    main()
