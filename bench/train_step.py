"""One full ResNet-18 train step (forward, backward, AdamW update): navee_jax (Flax NNX / XLA) vs
torchvision's resnet18 in PyTorch, side by side in one run, on the CPU.

    python bench/train_step.py [--batch 32] [--size 112] [--steps 3] [--rounds 5] [--threads N]
                               [--also-default] [--max-seconds 150]

Both sides do the same work per step on the same PK batch (8 classes x 4 images of 112x112, uint8 on
the host, normalised with ImageNet mean/std inside the step), in float32:

  flax   navee_jax's real train step: `make_train_step` over `build_model` (configs/triplet.py: ResNet-18
         width 64 + Linear(512, 256) + L2 norm), its objective (`make_objective`: triplet loss, batch-hard
         miner, Euclidean, margin 0.2), optax.adamw, BatchNorm in train mode, the state donated, uint8 NHWC
         images normalised inside the jit (`image_normalizer`).
  torch  torchvision.models.resnet18 with fc = Linear(512, 256), L2 norm, the same batch-hard triplet
         loss written in torch, torch.optim.AdamW, train mode, uint8 NCHW images normalised in the step,
         torch.set_num_threads(--threads) (default: all cores).

The Flax step is compiled with the compile options `make_train_step` uses on a CPU mesh (XLA:CPU's own
Eigen convolutions instead of the YNNPACK ones jaxlib 0.10 uses by default; dots and reductions stay on
YNNPACK; see navee_jax.backend.compiler_options and docs/train_step.md) and the model is built with the
CPU backward passes (`build_model(..., cpu_tuned=backend.cpu_tuned(mesh))`, navee_jax.models.cpu_tuned),
as the real callers do; NAVEE_PLAIN_MODELS=1 times the plain model and default options instead.
`--also-default` also times the step compiled with jaxlib's defaults.

Each side is compiled / warmed up first; then rounds alternate the sides (`--steps` timed steps each).
A round during which other processes used more than --quiet-cpu-s CPU seconds is marked disturbed
and left out (two busy threads on two cores slow PyTorch's OpenMP barriers several-fold, XLA much
less); rounds go on until `--rounds` undisturbed ones or --max-seconds. Prints a line per round, then
the median s/step and images/s per side over the undisturbed rounds and the ratio torch s/step /
flax s/step (>= 1: Flax is at least as fast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MARGIN, LR, WEIGHT_DECAY = 0.2, 1e-3, 1e-4



def make_batch(batch: int, size: int, images_per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(batch // images_per_class), images_per_class).astype(np.int32)
    return images, labels


def neighbour_cpu_seconds() -> float:
    """CPU seconds used so far by everything on the machine except this process."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    mine = os.times()
    return busy - mine.user - mine.system


# ---------------------------------------------------------------------------------------------- flax


def build_flax(images: np.ndarray, labels: np.ndarray, xla_options: dict | None, backbone: str = "resnet18",
               compute_dtype: str = "float32"):
    """(jitted train step, state, batch) of navee_jax's real train step: `step(state, batch)` (bench/gpu_check.py
    also times ResNet-50 and ViT-B/16, in bf16 on an accelerator)."""
    import jax
    import optax
    from flax import nnx

    from configs import triplet
    from navee_jax.backend import cpu_tuned
    from navee_jax.models import build_model
    from navee_jax.losses import make_objective
    from navee_jax.sharding import make_mesh, replicated, shard_step_batch
    from navee_jax.embed import image_normalizer
    from navee_jax.train.step import init_train_state, make_train_step

    cfg = triplet.get_config()  # loss: triplet, batch_hard miner, euclidean, margin 0.2
    cfg.data.image_size = images.shape[1]
    cfg.model.backbone, cfg.model.compute_dtype = backbone, compute_dtype
    assert (cfg.loss.name, cfg.loss.miner, cfg.loss.metric, cfg.loss.margin) == ("triplet", "batch_hard",
                                                                                  "euclidean", MARGIN)
    objective = make_objective(cfg, labels)
    mesh, tx = make_mesh(), optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    model = build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size, cpu_tuned=cpu_tuned(mesh))
    graphdef, _, state = init_train_state(model, tx)
    state = jax.device_put(state, replicated(mesh))
    step = make_train_step(graphdef, tx, objective.loss, mesh, image_normalizer(cfg.data), xla_options=xla_options)
    return step, state, shard_step_batch({"images": images, "labels": labels}, mesh)


def flax_step(images: np.ndarray, labels: np.ndarray, xla_options: dict | None, **model):
    """(run one step and wait for it, compile seconds); `xla_options` None: the step's own
    (`navee_jax.backend.compiler_options`), {}: jaxlib's defaults; `model`: build_flax's backbone / compute_dtype."""
    import jax

    step, state, batch = build_flax(images, labels, xla_options, **model)
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    return run, compile_s


# --------------------------------------------------------------------------------------------- torch


def torchvision_model(backbone: str, size: int):
    """torchvision's network of navee_jax's `backbone` name, its classifier replaced by Linear(features, 256)."""
    import torch
    import torchvision

    if backbone == "vit_b16":
        model = torchvision.models.vit_b_16(image_size=size)
        model.heads = torch.nn.Linear(768, 256)
        return model
    model = getattr(torchvision.models, backbone)()
    model.fc = torch.nn.Linear(model.fc.in_features, 256)
    return model


def torch_step(images: np.ndarray, labels: np.ndarray, threads: int, backbone: str = "resnet18",
               device: str = "cpu", bf16: bool = False):
    """(run one step and wait for it); on CUDA with `bf16`, the forward pass under bf16 autocast."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision_model(backbone, images.shape[1]).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW uint8, as a loader gives
    y = torch.from_numpy(labels).long().to(device)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1).to(device)
    std = torch.tensor(STD).view(1, 3, 1, 1).to(device)

    def triplet(emb: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        # navee_jax's batch-hard triplet loss: Euclidean distances of direct differences (sqrt with a
        # zero gradient at 0), hardest positive / negative per anchor, mean over anchors having both.
        d2 = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
        pos = d2 > 0
        d = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))
        same = lab[:, None] == lab[None, :]
        positive = same & ~torch.eye(len(lab), dtype=torch.bool, device=lab.device)
        negative = ~same
        hp = torch.where(positive, d, torch.full_like(d, -torch.inf)).amax(1)
        hn = torch.where(negative, d, torch.full_like(d, torch.inf)).amin(1)
        valid = positive.any(1) & negative.any(1)
        per = torch.where(valid, torch.relu(hp - hn + MARGIN), torch.zeros_like(hp))
        return per.sum() / valid.sum().clamp(min=1)

    def run() -> None:
        x = (x_u8.float() / 255.0 - mean) / std
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            features = model(x)
        emb = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-12)
        loss = triplet(emb, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # waits for the device

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
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=5, help="undisturbed rounds to collect")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="give up collecting rounds after this")
    parser.add_argument("--quiet-cpu-s", type=float, default=0.3,
                        help="a round is disturbed when other processes used more CPU seconds than this")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side after compiling")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--also-default", action="store_true",
                        help="also time the Flax step compiled with jaxlib's default options (YNNPACK convolutions)")
    parser.add_argument("--only", choices=("flax", "torch"), default=None)
    args = parser.parse_args()

    images, labels = make_batch(args.batch, args.size)
    sides, notes = {}, []
    if args.only != "flax":
        sides["torch"] = torch_step(images, labels, args.threads)
    if args.only != "torch":
        variants = {"flax": None, **({"flax-xla-default": {}} if args.also_default else {})}
        for name, options in variants.items():
            sides[name], compile_s = flax_step(images, labels, options)
            notes.append(f"{name} compile {compile_s:.1f} s")
    for run in sides.values():
        for _ in range(args.warmup):
            run()

    import jax
    import torch

    from navee_jax.sharding import make_mesh
    from navee_jax.backend import compiler_options, cpu_tuned

    print(f"machine: {os.cpu_count()} CPU cores; jax {jax.__version__}, torch {torch.__version__} "
          f"({args.threads} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; flax compile options: "
          f"{compiler_options(make_mesh()) or 'defaults'}; CPU-tuned model: {cpu_tuned(make_mesh())}")
    print(f"ResNet-18, batch {args.batch} ({args.batch // 4} classes x 4), {args.size}x{args.size}, float32, "
          f"{args.steps} steps x {args.rounds} rounds; " + ", ".join(notes))
    times = {name: [] for name in sides}
    clean, deadline = [], time.time() + args.max_seconds
    while sum(clean) < args.rounds and time.time() < deadline:
        before = neighbour_cpu_seconds()
        for name, run in sides.items():
            times[name].append(time_steps(run, args.steps))
        others = neighbour_cpu_seconds() - before
        clean.append(others < args.quiet_cpu_s)
        print(f"round {len(clean)}: " + "  ".join(f"{n} {t[-1]:.3f}" for n, t in times.items())
              + f" s/step  (other processes: {others:.1f} CPU s{'' if clean[-1] else ', disturbed'})", flush=True)
        if not clean[-1]:
            time.sleep(1.0)
    keep = [i for i, c in enumerate(clean) if c]
    if not keep:
        print(f"warning: no undisturbed round in {args.max_seconds:.0f} s; medians over all rounds")
        keep = list(range(len(clean)))
    med = {n: statistics.median(t[i] for i in keep) for n, t in times.items()}
    print(f"medians over {len(keep)} undisturbed round(s) of {len(clean)}:")
    print(f"{'side':<18}{'s/step':>8}{'images/s':>10}")
    for n, m in med.items():
        print(f"{n:<18}{m:>8.3f}{args.batch / m:>10.1f}")
    for n, m in med.items():
        if n != "torch" and "torch" in med:
            print(f"ratio torch/{n} time: {med['torch'] / m:.2f} (>= 1: Flax is as fast)")

if __name__ == "__main__":
    main()
