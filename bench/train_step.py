"""One full ResNet-18 train step (forward, backward, AdamW update): navee_jax (Flax NNX / XLA) vs
torchvision's resnet18 in PyTorch, side by side in one run, on the CPU.

    python bench/train_step.py [--batch 32] [--size 112] [--steps 5] [--rounds 5] [--threads N]

Both sides do the same work per step on the same PK batch (8 classes x 4 images of 112x112, uint8 on the
host, normalised with ImageNet mean/std inside the step):

  flax   navee_jax's real train step: `make_train_step` over `build_model` (configs/triplet.py: ResNet-18
         width 64 + Linear(512, 256) + L2 norm), batch-hard triplet loss (`make_loss_fn`), optax.adamw,
         BatchNorm in train mode, state donated, uint8 NHWC input normalised in the jit (`image_normalizer`).
  torch  torchvision.models.resnet18 with fc = Linear(512, 256), L2 norm, the same batch-hard triplet loss
         written in torch, torch.optim.AdamW, train mode, uint8 NCHW input normalised in the step,
         torch.set_num_threads(--threads).

Each side is warmed up (XLA compile; oneDNN primitive creation) first; then `--rounds` rounds alternate
torch / flax (`--steps` timed steps each), so a busy neighbour slows both alike. Prints a line per
round and then, for each side, the median s/step and images/s, and the ratio torch s/step / flax s/step
(>= 1: Flax is at least as fast). XLA_FLAGS set in the environment are honoured and printed (see
docs/train_step.md for the ones that matter here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MARGIN, LR, WEIGHT_DECAY = 0.2, 1e-3, 1e-4


def make_batch(batch: int, size: int, images_per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(batch // images_per_class), images_per_class).astype(np.int32)
    return images, labels


# ---------------------------------------------------------------------------------------------- flax


def flax_step(images: np.ndarray, labels: np.ndarray):
    """() -> None running one step of navee_jax's train step (and waiting for it)."""
    import jax
    import optax
    from flax import nnx

    from configs import triplet
    from navee_jax.models import build_model
    from navee_jax.train.loop import make_loss_fn
    from navee_jax.train.sharding import make_mesh, replicated, shard_batch
    from navee_jax.train.step import image_normalizer, init_train_state, make_train_step

    cfg = triplet.get_config()
    cfg.data.image_size = images.shape[1]
    mesh, tx = make_mesh(), optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    graphdef, _, state = init_train_state(build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size), tx)
    holder = {"state": jax.device_put(state, replicated(mesh))}
    step = make_train_step(graphdef, tx, make_loss_fn(cfg.loss), mesh, image_normalizer(cfg.data))
    batch = shard_batch((images, labels), mesh)

    def run() -> None:
        holder["state"], metrics = step(holder["state"], *batch)
        jax.block_until_ready((holder["state"], metrics))

    return run


# --------------------------------------------------------------------------------------------- torch


def torch_step(images: np.ndarray, labels: np.ndarray, threads: int):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Linear(512, 256)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NCHW uint8, as a torch loader gives
    y = torch.from_numpy(labels).long()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def triplet(emb: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        # Same formulation as navee_jax.losses.batch_hard_triplet_loss (direct differences, safe sqrt).
        d2 = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
        pos = d2 > 0
        d = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))
        same = lab[:, None] == lab[None, :]
        positive = same & ~torch.eye(len(lab), dtype=torch.bool)
        negative = ~same
        hp = torch.where(positive, d, torch.zeros_like(d)).amax(1)
        hn = torch.where(negative, d, torch.full_like(d, torch.finfo(d.dtype).max)).amin(1)
        valid = positive.any(1) & negative.any(1)
        per = torch.where(valid, torch.relu(hp - hn + MARGIN), torch.zeros_like(hp))
        return per.sum() / valid.sum().clamp(min=1)

    def run() -> None:
        x = (x_u8.float() / 255.0 - mean) / std
        emb = torch.nn.functional.normalize(model(x), dim=1, eps=1e-12)
        loss = triplet(emb, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    return run


# ---------------------------------------------------------------------------------------------- main


def time_steps(run, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - t) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side after compiling")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--only", choices=("flax", "torch"), default=None)
    args = parser.parse_args()

    images, labels = make_batch(args.batch, args.size)
    sides = {}
    if args.only != "flax":
        sides["torch"] = torch_step(images, labels, args.threads)
    if args.only != "torch":
        t = time.perf_counter()
        sides["flax"] = flax_step(images, labels)
        sides["flax"]()
        compile_s = time.perf_counter() - t
    for run in sides.values():
        for _ in range(args.warmup):
            run()

    import jax
    import torch

    print(f"machine: {os.cpu_count()} CPU cores; jax {jax.__version__}, torch {torch.__version__} "
          f"({args.threads} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"ResNet-18, batch {args.batch} ({args.batch // 4} classes x 4), {args.size}x{args.size}, float32, "
          f"{args.steps} steps x {args.rounds} rounds" + (f"; flax compile + first step {compile_s:.1f} s"
                                                          if "flax" in sides else ""))
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, run in sides.items():
            times[name].append(time_steps(run, args.steps))
        print(f"round {r + 1}: " + "  ".join(f"{n} {t[-1]:.3f} s/step" for n, t in times.items()), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"{'side':<8}{'s/step':>10}{'images/s':>10}")
    for n, m in med.items():
        print(f"{n:<8}{m:>10.3f}{args.batch / m:>10.1f}")
    if len(med) == 2:
        print(f"ratio torch/flax time: {med['torch'] / med['flax']:.2f} (>= 1: Flax is as fast)")


if __name__ == "__main__":
    main()
