"""tf.data input: decode -> (random) resize -> augment -> batch -> prefetch, as uint8 NumPy batches.

Sampling (which images form a batch) is done in NumPy from a seed and the epoch number, so an
epoch's batches are identical whether a run is fresh or resumed; tf.data does the parallel work.
Every sampler reads the pool through one per-class table (`navee_jax.data.episodes.ClassTable`);
episodes are drawn by `navee_jax.data.episodes.EpisodeSampler`, the sampler evaluation uses too.
"""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np

from navee_jax.data import augment
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.episodes import ClassTable, EpisodeSampler
from navee_jax.data.tf_import import tf_module
from navee_jax.errors import UserError
from navee_jax.sharding import process_share


def pk_indices(labels: np.ndarray, pool: np.ndarray, classes_per_batch: int, images_per_class: int,
               num_batches: int, rng: np.random.Generator) -> np.ndarray:
    """(num_batches, P*K) catalogue indices: P distinct classes, K images each.

    A class with fewer than K images contributes repeats (sampled with replacement); classes with a
    single image are never drawn, since they can provide no positive pair.
    """
    table = ClassTable(labels, pool)
    eligible = np.flatnonzero(table.count >= 2)
    if len(eligible) < classes_per_batch:
        raise UserError(f"sampler.classes_per_batch={classes_per_batch}, but only {len(eligible)} training classes "
                        f"have >= 2 images; lower --config.sampler.classes_per_batch")
    batches = np.empty((num_batches, classes_per_batch * images_per_class), np.int64)
    for b in range(num_batches):
        chosen = rng.choice(eligible, size=classes_per_batch, replace=False)
        batches[b] = np.concatenate([
            rng.choice(table.members(r), size=images_per_class, replace=table.count[r] < images_per_class)
            for r in chosen])
    return batches


def _tuple_setup(labels: np.ndarray, pool: np.ndarray, what: str) -> tuple[ClassTable, np.ndarray]:
    """The pool's class table and the positions (into its `images`) of images with a same-class partner."""
    blocks = ClassTable(labels, pool)
    if len(blocks.count) < 2:
        raise UserError(f"{what} need at least 2 training classes; the pool has {len(blocks.count)}")
    with_positive = np.flatnonzero(blocks.count[blocks.row] >= 2)
    if len(with_positive) == 0:
        raise UserError(f"{what} need a training class with >= 2 images; every class has one")
    return blocks, with_positive


def pair_indices(labels: np.ndarray, pool: np.ndarray, pairs_per_batch: int, p_same: float, num_batches: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pairs for contrastive / verification training: {"pairs": (B, n, 2) catalogue indices, "same": (B, n)}.

    Each pair is positive with probability `p_same`: two distinct images of one class (the first drawn
    uniformly from images of classes with >= 2 images); otherwise an image drawn uniformly from the
    pool and one drawn uniformly from the images of all other classes.
    """
    if not 0.0 <= p_same <= 1.0:
        raise UserError(f"sampler.p_same={p_same}: must be a probability in [0, 1]")
    blocks, with_positive = _tuple_setup(labels, pool, "pairs")
    shape = (num_batches, pairs_per_batch)
    same = rng.random(shape) < p_same
    first = np.where(same, rng.choice(with_positive, size=shape), rng.integers(0, len(blocks.images), size=shape))
    positive = blocks.other_image_same_class(np.where(same, first, with_positive[0]), rng)
    second = np.where(same, positive, blocks.image_of_other_class(first, rng))
    return {"pairs": blocks.images[np.stack([first, second], axis=-1)], "same": same}


def triplet_indices(labels: np.ndarray, pool: np.ndarray, triplets_per_batch: int, num_batches: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(B, n, 3) catalogue indices (anchor, positive, negative): the anchor drawn uniformly from images of
    classes with >= 2 images, the positive another image of its class, the negative any other class's."""
    blocks, with_positive = _tuple_setup(labels, pool, "triplets")
    anchor = rng.choice(with_positive, size=(num_batches, triplets_per_batch))
    positive = blocks.other_image_same_class(anchor, rng)
    negative = blocks.image_of_other_class(anchor, rng)
    return blocks.images[np.stack([anchor, positive, negative], axis=-1)]


def _on_white(rgba):
    """Composites an RGBA uint8 image onto white: product cut-outs keep a white, not black, background."""
    tf = tf_module()
    rgb, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32) / 255.0
    return tf.cast(tf.round(rgb * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _image_fn(catalogue: Catalogue, data: ml_collections.ConfigDict, train: bool):
    """(index, seed) -> uint8 (S, S, 3) image, as a TF function; `train` adds the random transforms
    (random resized crop instead of a plain resize, flip, rotation, Koch's affine distortions, colour
    jitter). A rotated class's copy (`catalogue.quarter_turns`) is turned first.

    Batches stay uint8 and are normalised inside the jitted step (`train.step.normalize_images`): 4x less
    host memory traffic, and decode + flip never leave uint8 (docs/input_pipeline.md).
    """
    tf = tf_module()
    if data.resize not in augment.RESIZE_MODES:
        raise UserError(f"data.resize: {data.resize!r} is not one of {augment.RESIZE_MODES}")
    in_float = augment.needs_float(data, train)
    if catalogue.pixels is not None:
        table = tf.constant(catalogue.pixels)
        read = lambda i: tf.gather(table, i)  # noqa: E731
    else:
        paths = tf.constant(catalogue.paths)
        transparent = tf.constant(catalogue.transparent) if any(catalogue.transparent or ()) else None

        # Files were fully decoded once when the catalogue was built, so this cannot fail on bad files.
        def read(i):
            raw = tf.io.read_file(tf.gather(paths, i))
            decode = lambda: tf.io.decode_image(raw, channels=3, expand_animations=False)  # noqa: E731
            if transparent is None:  # the common case: no per-image branch in the graph at all
                return decode()
            return tf.cond(tf.gather(transparent, i), lambda: _on_white(tf.io.decode_png(raw, channels=4)), decode)

    turns = (tf.constant(catalogue.quarter_turns.astype(np.int32))
             if catalogue.quarter_turns is not None and np.any(catalogue.quarter_turns) else None)

    def load(i, seed):
        img = read(i)
        if turns is not None:  # a rotated class's copy (navee_jax.data.rotations)
            img = tf.image.rot90(img, tf.gather(turns, i))
        if img.shape[-1] == 1:
            img = tf.image.grayscale_to_rgb(img)
        if in_float:
            img = tf.image.convert_image_dtype(img, tf.float32)
        if train and data.crop_scale_min < 1:
            img = augment.random_resized_crop(img, seed, data.image_size, data.crop_scale_min)
        else:
            img = augment.resize(img, data.image_size, data.resize, data.fill, data.crop_fraction,
                                 data.interpolation)
        if train:
            img = augment.geometry_and_colour(img, seed, data)
        if data.grayscale or data.binarize:
            img = augment.to_grayscale(img, data.binarize)
        return augment.to_uint8(img) if in_float else img

    return load


def _image_stream(catalogue: Catalogue, idx: np.ndarray, positions: np.ndarray, aug_seed: int,
                  data: ml_collections.ConfigDict):
    """The augmented uint8 training images of the flat index array `idx`, decoded in parallel image by
    image, in order. Each image's stateless seed is (aug_seed, its position in the global batch), so
    augmentation depends only on (seed, epoch, position), not on threading or on how a batch is split
    between processes."""
    tf = tf_module()
    seeds = np.stack([np.full(len(idx), aug_seed), positions], axis=1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((idx.astype(np.int64), seeds))
    return ds.map(_image_fn(catalogue, data, train=True), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _batched(catalogue: Catalogue, batches: np.ndarray, extras: dict[str, np.ndarray], aug_seed: int,
             data: ml_collections.ConfigDict, process_index: int, process_count: int, *,
             labels: bool = True, replicated: dict[str, np.ndarray] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """{"images": (n, *rest, S, S, 3) uint8, "labels": (n, *rest) int32, **extras} per global batch of
    `batches` (num_batches, n, *rest) catalogue indices; with several processes, each decodes only its
    share of n, and gets the same share of `extras` (num_batches, n, ...). `replicated` arrays
    (num_batches, ...) come whole to every process; labels=False leaves out "labels"."""
    tf = tf_module()
    positions = np.arange(batches.size).reshape(batches.shape)
    idx = process_share(batches, process_index, process_count, axis=1)
    positions = process_share(positions, process_index, process_count, axis=1)
    images = _image_stream(catalogue, idx.reshape(-1), positions.reshape(-1), aug_seed, data)
    for width in reversed(idx.shape[1:]):
        images = images.batch(width, drop_remainder=True)
    meta = {**({"labels": catalogue.labels[idx].astype(np.int32)} if labels else {}),
            **{k: process_share(v, process_index, process_count, axis=1) for k, v in extras.items()},
            **(replicated or {})}
    ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(meta)))
    return ds.map(lambda im, m: {"images": im, **m}).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def train_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                  num_batches: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of PK batches {"images": (B, S, S, 3) uint8, "labels": (B,) int32}. With several
    processes (multi-host), every process samples the same global batches and decodes only its share."""
    rng = np.random.default_rng([cfg.seed, 2, epoch])
    batches = pk_indices(catalogue.labels, pool, cfg.sampler.classes_per_batch, cfg.sampler.images_per_class,
                         num_batches, rng)
    aug_seed = int(rng.integers(2**31 - 1))
    return _batched(catalogue, batches, {}, aug_seed, cfg.data, process_index, process_count)


def shuffled_indices(pool: np.ndarray, batch_size: int, num_batches: int, rng: np.random.Generator) -> np.ndarray:
    """(num_batches, batch_size) indices of `pool` in shuffled passes: each pass a fresh permutation of the
    whole pool, the next pass starting where a batch needs more than the last one left (every image once per
    pass, batches of one size for the jitted step)."""
    needed = num_batches * batch_size
    passes = [rng.permutation(pool) for _ in range(-(-needed // len(pool)))]
    return np.concatenate(passes)[:needed].reshape(num_batches, batch_size)


def shuffled_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                     num_batches: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of `sampler.batch_size` images drawn without replacement (`shuffled_indices`), the
    classifier's batches: {"images": (B, S, S, 3) uint8, "labels": (B,) int32}. Sharded like `train_batches`."""
    rng = np.random.default_rng([cfg.seed, 7, epoch])
    batches = shuffled_indices(np.asarray(pool), cfg.sampler.batch_size, num_batches, rng)
    aug_seed = int(rng.integers(2**31 - 1))
    return _batched(catalogue, batches, {}, aug_seed, cfg.data, process_index, process_count)


def tuple_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                  num_batches: int, kind: str, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of `sampler.tuples_per_batch` pairs or triplets per batch (see `pair_indices` and
    `triplet_indices`): {"images": (n, T, S, S, 3) uint8, "labels": (n, T) int32}, plus "same": (n,)
    for pairs; T is 2 or 3. Sharded between processes like `train_batches`."""
    s = cfg.sampler
    if kind == "pairs":
        rng = np.random.default_rng([cfg.seed, 5, epoch])
        drawn = pair_indices(catalogue.labels, pool, s.tuples_per_batch, s.p_same, num_batches, rng)
        batches, extras = drawn["pairs"], {"same": drawn["same"]}
    elif kind == "triplets":
        rng = np.random.default_rng([cfg.seed, 6, epoch])
        batches, extras = triplet_indices(catalogue.labels, pool, s.tuples_per_batch, num_batches, rng), {}
    else:
        raise ValueError(f"kind must be 'pairs' or 'triplets', not {kind!r}")
    aug_seed = int(rng.integers(2**31 - 1))
    return _batched(catalogue, batches, extras, aug_seed, cfg.data, process_index, process_count)


def episode_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                    num_batches: int, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of training episodes from `pool` (`EpisodeSampler`, one pool), in the train step's form.

    sampler.kind 'episodes': one N-way K-shot episode with Q queries per class per batch,
    {"images": uint8 (N*(K+Q), S, S, 3), support images then queries, "support_labels": int32 (N*K,),
    "query_labels": int32 (N*Q,)} with episode-local, class-major labels 0..N-1.
    sampler.kind 'tasks': `sampler.tasks_per_batch` (T) episodes per batch, stacked on a leading task
    axis: images (T, N*(K+Q), S, S, 3), support_labels (T, N*K), query_labels (T, N*Q).

    With several processes every process samples the same global episodes and decodes only its share,
    like PK batches: 'episodes' shares the episode's image axis (the labels are small and replicated:
    every process gets them whole), 'tasks' the task axis of every array. Augmentation is seeded by the
    image's position in the global batch, so the images do not depend on the process count.
    """
    s = cfg.sampler
    if s.kind not in ("episodes", "tasks"):
        raise ValueError(f"episode_batches: sampler.kind must be 'episodes' or 'tasks', not {s.kind!r}")
    tasks = s.tasks_per_batch if s.kind == "tasks" else 1
    rng = np.random.default_rng([cfg.seed, 4, epoch])
    eps = EpisodeSampler(catalogue.labels[pool]).sample(s.ways, s.shots, s.queries, num_batches * tasks, rng)
    aug_seed = int(rng.integers(2**31 - 1))
    images = pool[np.concatenate([eps.support, eps.query], axis=1)]
    labels = {"support_labels": eps.support_labels.astype(np.int32),
              "query_labels": eps.query_labels.astype(np.int32)}
    if s.kind == "episodes":
        return _batched(catalogue, images, {}, aug_seed, cfg.data, process_index, process_count,
                        labels=False, replicated=labels)
    shape = (num_batches, tasks, -1)
    return _batched(catalogue, images.reshape(shape), {k: v.reshape(shape) for k, v in labels.items()}, aug_seed,
                    cfg.data, process_index, process_count, labels=False)


def eval_batches(catalogue: Catalogue, indices: np.ndarray, data: ml_collections.ConfigDict,
                 batch_size: int) -> Iterator[np.ndarray]:
    """Un-augmented uint8 images of `indices`, in order, batched (the last batch may be short)."""
    tf = tf_module()
    load = _image_fn(catalogue, data, train=False)
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    ds = ds.map(lambda i: load(i, None), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def augmented_batches(catalogue: Catalogue, indices: np.ndarray, data: ml_collections.ConfigDict, batch_size: int,
                      aug_seed: int) -> Iterator[np.ndarray]:
    """Training-augmented uint8 images of `indices`, in order, batched (the last batch may be short): one
    augmented view of each image, determined by (aug_seed, its position in `indices`)."""
    images = _image_stream(catalogue, indices, np.arange(len(indices)), aug_seed, data)
    return images.batch(batch_size).prefetch(tf_module().data.AUTOTUNE).as_numpy_iterator()

