"""`launch.py --mode=evaluate`: a trained embedding, the initial network and HOG / raw-pixel baselines in one
report, on Omniglot's held-out characters; the baselines' mAP recomputed with skimage and scikit-learn."""

import json
import os

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.feature import hog
from sklearn.metrics import average_precision_score

from configs import triplet
from conftest import OMNIGLOT, run_launch
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.sources import folder_catalogue

KOREAN = os.path.join(OMNIGLOT, "images_background_small1", "Korean")
SMALL = ["--config=configs/triplet.py:omniglot", f"--config.data.root={KOREAN}", "--config.model.width=16",
         "--config.eval.episodes=10", "--config.eval.standard_episodes=40", "--config.eval.classifiers=('1nn',)",
         "--config.eval.grid_ways=(2,5,20)", "--config.eval.grid_shots=(1,5,10)"]


def _sklearn_map(support: np.ndarray, support_labels, query: np.ndarray, query_labels) -> float:
    d = np.sqrt(((query[:, None, :] - support[None]) ** 2).sum(-1))
    return float(np.mean([average_precision_score(support_labels == ql, -di) for di, ql in zip(d, query_labels)]))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(KOREAN),
                    reason=f"Omniglot not found at {KOREAN} (../shared/data is not part of a fresh clone)")
def test_evaluate_reports_trained_embedding_and_baselines_on_omniglot(tmp_path):
    r = run_launch([*SMALL, f"--workdir={tmp_path}", "--config.train.num_epochs=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_launch([*SMALL, f"--workdir={tmp_path}", "--mode=evaluate"])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    sources = report["sources"]
    assert set(sources) == {"trained embedding", "untrained network", "raw pixels", "HOG"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert all(name in md for name in sources)
    for caption, rel in report["figures"].items():  # every linked figure exists
        assert (tmp_path / "report" / rel).is_file() and f"]({rel})" in md, caption
    # the grid: CIs where the 10 held-out characters allow the setting, skipped (with why) where not
    grid = {(c["ways"], c["shots"]): c for c in sources["HOG"]["grid"]}
    assert grid[(5, 5)]["ci95"] > 0 and "skipped" in grid[(20, 1)]  # 10 classes cannot make a 20-way episode
    assert sources["trained embedding"]["retrieval"]["map"] > sources["untrained network"]["retrieval"]["map"]

    # The baselines' mAP, recomputed from the same decoded images with skimage and scikit-learn alone.
    cfg = triplet.get_config("omniglot")
    cat = folder_catalogue(KOREAN)
    split = json.loads((tmp_path / "splits.json").read_text())
    index = {p: i for i, p in enumerate(cat.paths)}
    parts = {}
    for part in ("support", "query"):
        idx = np.array([index[p] for p in split[part]])
        images = np.concatenate(list(eval_batches(cat, idx, cfg.data, 64))) / 255.0
        gray = rgb2gray(images)
        parts[part] = {"raw pixels": images.reshape(len(idx), -1), "labels": cat.labels[idx],
                       "HOG": np.stack([hog(g, orientations=9, pixels_per_cell=(3, 3), cells_per_block=(2, 2),
                                            block_norm="L2-Hys") for g in gray])}
    # Binary pixels give exact float32 distances; HOG's float32 distances can order near-ties differently
    # from float64 ones, which moves mAP in the 4th decimal.
    for name, rel in (("raw pixels", 1e-6), ("HOG", 1e-3)):
        want = _sklearn_map(parts["support"][name], parts["support"]["labels"], parts["query"][name],
                            parts["query"]["labels"])
        assert sources[name]["retrieval"]["map"] == pytest.approx(want, rel=rel), name
