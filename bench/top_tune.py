"""One epoch of top-tuning (the head on cached features) against one epoch of full fine-tuning of the same
backbone, side by side in one process, on the same PK batches' sizes and the same number of steps.

    python bench/top_tune.py [--backbone vit_s16] [--image-size 64] [--steps 20] [--repeats 3]

Prints, for each, the first epoch (compilation included: what a user meets) and the best of `--repeats` later
epochs, and their ratio; and the one-off cost of filling the feature cache. Runs on the built-in digits (no
files needed), so the numbers measure the step, not the data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from configs import top_tune  # noqa: E402
from navee_jax.launcher.train import build_setup  # noqa: E402
from navee_jax.sharding import shard_step_batch  # noqa: E402


def epoch_seconds(setup, epoch: int, steps: int) -> float:
    """Wall time of one epoch as the training loop runs it: its batches, each step, the last result ready."""
    trainer, state = setup.trainer, setup.state
    start = time.perf_counter()
    for batch in trainer.batches(epoch, steps):
        state, metrics = trainer.train_step(state, shard_step_batch(batch, setup.mesh))
    jax.block_until_ready(metrics)
    setup.state = state
    return time.perf_counter() - start


class Run:
    def __init__(self, config):
        start = time.perf_counter()
        built = build_setup(config)
        self.build_seconds = time.perf_counter() - start
        self.trainer, self.mesh, self.state = built.trainer, built.mesh, built.trainer.state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_s16")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps in an epoch")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    runs, sampler = {}, None
    with tempfile.TemporaryDirectory() as cache:
        for method in ("top_tune", "metric_learning"):
            c = top_tune.get_config("digits")
            c.method, c.model.backbone, c.data.image_size, c.top.cache_dir = method, a.backbone, a.image_size, cache
            runs[method], sampler = Run(c), c.sampler
    print(f"{a.backbone} at {a.image_size}x{a.image_size}, PK batches of {sampler.classes_per_batch} x "
          f"{sampler.images_per_class}, {a.steps} steps an epoch; "
          f"{jax.devices()[0].device_kind}")
    print(f"filling the feature cache (building top-tuning, 1 view of the training images): "
          f"{runs['top_tune'].build_seconds:.1f} s (building full fine-tuning: "
          f"{runs['metric_learning'].build_seconds:.1f} s)")
    times = {m: [epoch_seconds(r, e, a.steps) for e in range(1 + a.repeats)] for m, r in runs.items()}
    for label, pick in (("first epoch (compiling)", lambda t: t[0]), ("later epoch (best)", lambda t: min(t[1:]))):
        top, full = pick(times["top_tune"]), pick(times["metric_learning"])
        print(f"{label}: top-tuning {top:.3f} s, full fine-tuning {full:.3f} s: {full / top:.0f}x")


if __name__ == "__main__":
    main()
