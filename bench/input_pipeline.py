"""Input pipeline throughput: tf.data (navee_jax.data.pipeline) vs a plain PIL + NumPy loop, and the
ResNet-18 train step's appetite, side by side in one run.

    python bench/input_pipeline.py [--root ../shared/data/fashion_product_images] [--images 2048]

Every loader does the same work per image: read the JPEG, decode, resize to 224x224 (bilinear), random
horizontal flip, and stack into batches of 64. The plain PIL loop also normalises with ImageNet mean/std
on the host, in float32, as a hand-written loader does; tf.data hands over uint8 batches and the train
step normalises on the device, so a second PIL loop that also stops at uint8 is printed for a like-for-like
comparison. Ratios, not absolute times, are what carry from one machine to another.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from configs import triplet  # noqa: E402
from navee_jax.data.pipeline import train_batches  # noqa: E402
from navee_jax.data.sources import styles_catalogue  # noqa: E402

SIZE, BATCH = 224, 64


def pil_loop(paths: list[str], mean: np.ndarray | None, std: np.ndarray | None, rng: np.random.Generator) -> int:
    """Batches of float32 normalised images, or of uint8 images when `mean` is None."""
    n = 0
    for start in range(0, len(paths) - BATCH + 1, BATCH):
        batch = []
        for p in paths[start:start + BATCH]:
            with Image.open(p) as im:
                img = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
            if rng.random() < 0.5:
                img = img[:, ::-1]
            batch.append(img if mean is None else (img.astype(np.float32) / 255 - mean) / std)
        np.stack(batch)
        n += BATCH
    return n


def train_step_images_per_second(steps: int = 3) -> float:
    import jax
    import optax
    from flax import nnx

    from navee_jax.backend import cpu_tuned
    from navee_jax.embed import image_normalizer
    from navee_jax.losses import make_objective
    from navee_jax.models import build_model
    from navee_jax.sharding import make_mesh, replicated, shard_step_batch
    from navee_jax.train.step import init_train_state, make_train_step

    cfg = triplet.get_config()
    mesh, tx = make_mesh(), optax.adam(1e-4)
    model = build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size, cpu_tuned=cpu_tuned(mesh))  # as training does
    graphdef, _, state = init_train_state(model, tx)
    state = jax.device_put(state, replicated(mesh))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(BATCH // 4), 4).astype(np.int32)
    step = make_train_step(graphdef, tx, make_objective(cfg, labels).loss, mesh, image_normalizer(cfg.data))
    batch = shard_step_batch({"images": images, "labels": labels}, mesh)
    state, m = step(state, batch)  # compile
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return steps * BATCH / (time.perf_counter() - t)


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    default_root = os.path.join(os.path.dirname(here), "shared", "data", "fashion_product_images")
    parser.add_argument("--root", default=default_root)
    parser.add_argument("--images", type=int, default=2048)
    args = parser.parse_args()
    if not os.path.isdir(args.root):
        sys.exit(f"error: {args.root} not found; pass --root=/path/to/fashion_product_images")

    cat = styles_catalogue(args.root, "articleType")
    cfg = triplet.get_config()
    cfg.data.image_size, cfg.data.flip = SIZE, True
    cfg.sampler.classes_per_batch, cfg.sampler.images_per_class = 16, 4
    pool = np.arange(len(cat))
    num_batches = args.images // BATCH
    mean, std = np.array(cfg.data.mean, np.float32), np.array(cfg.data.std, np.float32)

    next(train_batches(cat, pool, cfg, epoch=99, num_batches=1))  # build TF once, outside the timing
    t = time.perf_counter()
    n_tf = sum(len(b["labels"]) for b in train_batches(cat, pool, cfg, epoch=0, num_batches=num_batches))
    tf_rate = n_tf / (time.perf_counter() - t)

    paths = [cat.paths[i] for i in np.random.default_rng(0).permutation(len(cat))[:num_batches * BATCH]]
    t = time.perf_counter()
    n_pil = pil_loop(paths, mean, std, np.random.default_rng(0))
    pil_rate = n_pil / (time.perf_counter() - t)
    t = time.perf_counter()
    n_pil8 = pil_loop(paths, None, None, np.random.default_rng(0))
    pil8_rate = n_pil8 / (time.perf_counter() - t)

    step_rate = train_step_images_per_second()
    print(f"machine: {os.cpu_count()} CPU cores; {n_tf} images of {args.root}, {SIZE}x{SIZE}, batches of {BATCH}")
    print(f"{'loader':<34}{'images/s':>10}{'ratio':>10}")
    print(f"{'PIL + NumPy loop (float32 out)':<34}{pil_rate:>10.1f}{1.0:>10.2f}")
    print(f"{'PIL + NumPy loop (uint8 out)':<34}{pil8_rate:>10.1f}{pil8_rate / pil_rate:>10.2f}")
    print(f"{'tf.data (navee_jax, uint8 out)':<34}{tf_rate:>10.1f}{tf_rate / pil_rate:>10.2f}")
    print(f"{'ResNet-18 train step consumes':<34}{step_rate:>10.1f}{step_rate / pil_rate:>10.2f}")
    print(f"tf.data / PIL uint8 loop: {tf_rate / pil8_rate:.2f}x; tf.data / train step: {tf_rate / step_rate:.1f}x")


if __name__ == "__main__":
    main()
