"""tf.data input: decode -> (random) resize -> augment -> batch -> prefetch, as uint8 NumPy batches.

Sampling (which images form a batch) is done in NumPy from a seed and the epoch number, so an
epoch's batches are identical whether a run is fresh or resumed; tf.data does the parallel work.
"""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np

from navee_jax.data import augment
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.tf_import import tf_module
from navee_jax.errors import UserError


def _members_by_class(labels: np.ndarray, pool: np.ndarray, min_images: int) -> dict[int, np.ndarray]:
    """Indices of `pool` per class, for the classes with at least `min_images` of them."""
    members = {int(c): pool[labels[pool] == c] for c in np.unique(labels[pool])}
    return {c: m for c, m in members.items() if len(m) >= min_images}


def pk_indices(labels: np.ndarray, pool: np.ndarray, classes_per_batch: int, images_per_class: int,
               num_batches: int, rng: np.random.Generator) -> np.ndarray:
    """(num_batches, P*K) catalogue indices: P distinct classes, K images each.

    A class with fewer than K images contributes repeats (sampled with replacement); classes with a
    single image are never drawn, since they can provide no positive pair.
    """
    by_class = _members_by_class(labels, pool, min_images=2)
    eligible = np.array(sorted(by_class))
    if len(eligible) < classes_per_batch:
        raise UserError(f"sampler.classes_per_batch={classes_per_batch}, but only {len(eligible)} training classes "
                        f"have >= 2 images; lower --config.sampler.classes_per_batch")
    batches = np.empty((num_batches, classes_per_batch * images_per_class), np.int64)
    for b in range(num_batches):
        chosen = rng.choice(eligible, size=classes_per_batch, replace=False)
        batches[b] = np.concatenate([
            rng.choice(by_class[c], size=images_per_class, replace=len(by_class[c]) < images_per_class)
            for c in chosen])
    return batches


def episode_indices(labels: np.ndarray, pool: np.ndarray, ways: int, shots: int, queries: int, num_episodes: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """N-way K-shot episodes with Q queries per class, as catalogue indices:
    support (E, N*K), query (E, N*Q), classes (E, N) and filled (E, N).

    Queries are distinct images. A class with fewer than K images left after its queries gets its
    support set filled with copies of those images (made different by augmentation, as the study
    does); `filled` says how many support images of each class are such copies.
    """
    by_class = _members_by_class(labels, pool, min_images=queries + 1)
    eligible = np.array(sorted(by_class))
    if len(eligible) < ways:
        raise UserError(f"sampler.ways={ways}: only {len(eligible)} classes have more than sampler.queries={queries} "
                        f"images; lower --config.sampler.ways or --config.sampler.queries")
    support = np.empty((num_episodes, ways * shots), np.int64)
    query = np.empty((num_episodes, ways * queries), np.int64)
    classes = np.empty((num_episodes, ways), np.int64)
    filled = np.zeros((num_episodes, ways), np.int64)
    for e in range(num_episodes):
        classes[e] = rng.choice(eligible, size=ways, replace=False)
        for j, c in enumerate(classes[e]):
            members = rng.permutation(by_class[c])
            q, rest = members[:queries], members[queries:]
            if len(rest) >= shots:
                s = rest[:shots]
            else:
                filled[e, j] = shots - len(rest)
                s = np.concatenate([rest, rng.choice(rest, size=filled[e, j], replace=True)])
            support[e, j * shots:(j + 1) * shots] = s
            query[e, j * queries:(j + 1) * queries] = q
    return {"support": support, "query": query, "classes": classes, "filled": filled}


class _ClassBlocks:
    """`pool` sorted by class, with each image's class block, for vectorised draws of "another image of
    the same class" and "an image of any other class"."""

    def __init__(self, labels: np.ndarray, pool: np.ndarray):
        self.images = pool[np.argsort(labels[pool], kind="stable")]
        sorted_labels = labels[self.images]
        _, self.start, self.size = np.unique(sorted_labels, return_index=True, return_counts=True)
        self.block = np.searchsorted(self.start, np.arange(len(self.images)), side="right") - 1

    def other_image_same_class(self, at: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For positions `at` (in classes of >= 2 images), a different position of the same class."""
        b = self.block[at]
        r = self.start[b] + rng.integers(0, self.size[b] - 1)
        return np.where(r >= at, r + 1, r)

    def image_of_other_class(self, at: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For positions `at`, a position drawn uniformly from all images of the other classes."""
        b = self.block[at]
        r = rng.integers(0, len(self.images) - self.size[b])
        return np.where(r >= self.start[b], r + self.size[b], r)


def _tuple_setup(labels: np.ndarray, pool: np.ndarray, what: str) -> tuple[_ClassBlocks, np.ndarray]:
    blocks = _ClassBlocks(labels, pool)
    if len(blocks.size) < 2:
        raise UserError(f"{what} need at least 2 training classes; the pool has {len(blocks.size)}")
    with_positive = np.flatnonzero(blocks.size[blocks.block] >= 2)
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


def episode_batches(catalogue: Catalogue, pool: np.ndarray, cfg: ml_collections.ConfigDict, epoch: int,
                    num_episodes: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of training episodes: support_images (N*K, S, S, 3) uint8, support_labels (N*K,) and
    query_images / query_labels with episode-local labels 0..N-1, plus classes (N,) and filled (N,)."""
    tf = tf_module()
    s = cfg.sampler
    rng = np.random.default_rng([cfg.seed, 4, epoch])
    ep = episode_indices(catalogue.labels, pool, s.ways, s.shots, s.queries, num_episodes, rng)
    # One flat stream of images (each episode's support, then its queries), decoded in parallel image by
    # image like PK batches, then cut per episode.
    aug_seed = int(rng.integers(2**31 - 1))
    idx = np.concatenate([ep["support"], ep["query"]], axis=1).reshape(-1)
    images = _image_stream(catalogue, idx, np.arange(len(idx)), aug_seed, cfg.data)
    images = images.batch(s.ways * (s.shots + s.queries), drop_remainder=True)
    n_support = s.ways * s.shots

    def prepare(episode_images, classes, filled):
        return {"support_images": episode_images[:n_support], "query_images": episode_images[n_support:],
                "support_labels": tf.repeat(tf.range(s.ways, dtype=tf.int32), s.shots),
                "query_labels": tf.repeat(tf.range(s.ways, dtype=tf.int32), s.queries),
                "classes": classes, "filled": filled}

    metadata = tf.data.Dataset.from_tensor_slices((ep["classes"], ep["filled"]))
    ds = tf.data.Dataset.zip((images, metadata)).map(lambda im, m: prepare(im, *m))
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _on_white(rgba):
    """Composites an RGBA uint8 image onto white: product cut-outs keep a white, not black, background."""
    tf = tf_module()
    rgb, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32) / 255.0
    return tf.cast(tf.round(rgb * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _image_fn(catalogue: Catalogue, data: ml_collections.ConfigDict, train: bool):
    """(index, seed) -> uint8 (S, S, 3) image, as a TF function; `train` adds the random transforms
    (random resized crop instead of a plain resize, flip, rotation, colour jitter).

    Batches stay uint8 and are normalised inside the jitted step (`train.step.normalize_images`): 4x less
    host memory traffic, and decode + flip never leave uint8 (docs/input_pipeline.md).
    """
    tf = tf_module()
    if data.resize not in ("squash", "pad"):
        raise UserError(f"data.resize: {data.resize!r} is not 'squash' or 'pad'")
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

    def load(i, seed):
        img = read(i)
        if img.shape[-1] == 1:
            img = tf.image.grayscale_to_rgb(img)
        if in_float:
            img = tf.image.convert_image_dtype(img, tf.float32)
        if train and data.crop_scale_min < 1:
            img = augment.random_resized_crop(img, seed, data.image_size, data.crop_scale_min)
        else:
            img = augment.resize(img, data.image_size, data.resize, data.fill)
        if train:
            img = augment.geometry_and_colour(img, seed, data)
        if data.grayscale or data.binarize:
            img = augment.to_grayscale(img, data.binarize)
        return augment.to_uint8(img) if in_float else img

    return load


def process_share(batch: np.ndarray, process_index: int, process_count: int, axis: int = 0) -> np.ndarray:
    """This process's contiguous share of a global batch laid out along `axis`, as
    jax.make_array_from_process_local_data expects for a batch sharded on its leading axis."""
    width = batch.shape[axis]
    if width % process_count:
        raise UserError(f"global batch {width} is not divisible by {process_count} processes")
    per = width // process_count
    return np.take(batch, np.arange(process_index * per, (process_index + 1) * per), axis=axis)


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
             data: ml_collections.ConfigDict, process_index: int,
             process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """{"images": (n, *tuple, S, S, 3) uint8, "labels": (n, *tuple) int32, **extras} per global batch of
    `batches` (num_batches, n, *tuple); with several processes, each decodes only its share of n."""
    tf = tf_module()
    positions = np.arange(batches.size).reshape(batches.shape)
    idx = process_share(batches, process_index, process_count, axis=1)
    positions = process_share(positions, process_index, process_count, axis=1)
    images = _image_stream(catalogue, idx.reshape(-1), positions.reshape(-1), aug_seed, data)
    for width in reversed(idx.shape[1:]):
        images = images.batch(width, drop_remainder=True)
    meta = {"labels": catalogue.labels[idx].astype(np.int32),
            **{k: process_share(v, process_index, process_count, axis=1) for k, v in extras.items()}}
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


def eval_batches(catalogue: Catalogue, indices: np.ndarray, data: ml_collections.ConfigDict,
                 batch_size: int) -> Iterator[np.ndarray]:
    """Un-augmented uint8 images of `indices`, in order, batched (the last batch may be short)."""
    tf = tf_module()
    load = _image_fn(catalogue, data, train=False)
    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    ds = ds.map(lambda i: load(i, None), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
