"""tf.data input: decode -> resize -> normalise -> (random flip) -> batch -> prefetch, as NumPy.

Sampling (which images form a batch) is done in NumPy from a seed and the epoch number, so an
epoch's batches are identical whether a run is fresh or resumed; tf.data does the parallel work.
"""

from __future__ import annotations

import functools
from typing import Iterator

import ml_collections
import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.errors import UserError


@functools.cache
def _tf():
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the accelerators belong to JAX
    return tf


def pk_indices(labels: np.ndarray, pool: np.ndarray, classes_per_batch: int, images_per_class: int,
               num_batches: int, rng: np.random.Generator) -> np.ndarray:
    """(num_batches, P*K) catalogue indices: P distinct classes, K images each.

    A class with fewer than K images contributes repeats (sampled with replacement); classes with a
    single image are never drawn, since they can provide no positive pair.
    """
    by_class = {c: pool[labels[pool] == c] for c in np.unique(labels[pool])}
    eligible = np.array(sorted(c for c, m in by_class.items() if len(m) >= 2))
    if len(eligible) < classes_per_batch:
        raise UserError(
            f"sampler.classes_per_batch={classes_per_batch}, but only {len(eligible)} training classes have "
            f">= 2 images; "
            f"lower --config.sampler.classes_per_batch")
    batches = np.empty((num_batches, classes_per_batch * images_per_class), np.int64)
    for b in range(num_batches):
        chosen = rng.choice(eligible, size=classes_per_batch, replace=False)
        batches[b] = np.concatenate([
            rng.choice(by_class[c], size=images_per_class, replace=len(by_class[c]) < images_per_class)
            for c in chosen])
    return batches


def _on_white(rgba):
    """Composites an RGBA uint8 image onto white: product cut-outs keep a white, not black, background."""
    tf = _tf()
    rgb, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32) / 255.0
    return tf.cast(tf.round(rgb * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _image_fn(catalogue: Catalogue, data: ml_collections.ConfigDict):
    """index -> float32 (S, S, 3) normalised image, as a TF function."""
    tf = _tf()
    size = (data.image_size, data.image_size)
    mean = tf.constant(data.mean, tf.float32)
    std = tf.constant(data.std, tf.float32)
    if catalogue.pixels is not None:
        table = tf.constant(catalogue.pixels)
        read = lambda i: tf.gather(table, i)  # noqa: E731
    else:
        paths = tf.constant(catalogue.paths)
        transparent = tf.constant(catalogue.transparent or (False,) * len(catalogue))

        # Files were fully decoded once when the catalogue was built, so this cannot fail on bad files.
        def read(i):
            raw = tf.io.read_file(tf.gather(paths, i))
            return tf.cond(tf.gather(transparent, i), lambda: _on_white(tf.io.decode_png(raw, channels=4)),
                           lambda: tf.io.decode_image(raw, channels=3, expand_animations=False))

    def load(i):
        img = tf.image.convert_image_dtype(read(i), tf.float32)
        if img.shape[-1] == 1:
            img = tf.image.grayscale_to_rgb(img)
        img = tf.image.resize(img, size, method="bilinear", antialias=True)
        return (img - mean) / std

    return load


def train_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                  num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of PK batches {"images": (B, S, S, 3) float32, "labels": (B,) int32}."""
    tf = _tf()
    rng = np.random.default_rng([cfg.seed, 2, epoch])
    idx = pk_indices(catalogue.labels, pool, cfg.sampler.classes_per_batch, cfg.sampler.images_per_class,
                     num_batches, rng).reshape(-1)
    # Per-image stateless seeds: augmentation depends only on (seed, epoch, position), not on threading.
    aug_seed = int(rng.integers(2**31 - 1))
    seeds = np.stack([np.full(len(idx), aug_seed), np.arange(len(idx))], axis=1).astype(np.int64)
    load = _image_fn(catalogue, cfg.data)

    def prepare(i, label, seed):
        img = load(i)
        if cfg.data.flip:
            img = tf.image.stateless_random_flip_left_right(img, seed)
        return {"images": img, "labels": tf.cast(label, tf.int32)}

    ds = tf.data.Dataset.from_tensor_slices((idx, catalogue.labels[idx], seeds))
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(cfg.sampler.classes_per_batch * cfg.sampler.images_per_class, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def eval_batches(catalogue: Catalogue, indices: np.ndarray, data: ml_collections.ConfigDict,
                 batch_size: int) -> Iterator[np.ndarray]:
    """Un-augmented images of `indices`, in order, batched (the last batch may be short)."""
    tf = _tf()
    load = _image_fn(catalogue, data)
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
