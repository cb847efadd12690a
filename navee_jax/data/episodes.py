"""N-way K-shot episodes for training and evaluation: one per-class index table, one vectorised sampler.

`ClassTable` groups a pool of images by class once (pool indices sorted by class, each class's start and
count, padded (C, max) tables on demand). The episode sampler reads it, and so do the PK, pair and
triplet samplers of `navee_jax.data.pipeline`.

`EpisodeSampler` draws E episodes at once, with numpy array operations over all episodes (no per-episode
Python loop), from a seeded `np.random.Generator`, in one of two modes:

* two pools (evaluation: a support and a query pool of held-out images). A class is eligible with
  >= K support and >= `min_queries` query images. Each episode draws N distinct eligible classes
  uniformly, K support images per class without replacement, and up to Q = min(`queries`, the most query
  images any eligible class has) query images per class; a class short of Q queries uses all of them and
  the remaining slots are padding (index 0, `query_mask` False), so every episode has the same shape.
  Too few eligible classes raise ValueError (the evaluation reports the cell as skipped).
* one pool (training episodes). A class is eligible with more than Q = `queries` images. Each episode draws N
  distinct eligible classes uniformly, then per class Q + K of its images without replacement in random
  order (the same draw as above): the first Q are the queries, the next K the support set, so support and
  queries are disjoint. A class with fewer than K images left after its queries uses all of them as support
  and fills its remaining support slots with copies drawn uniformly (with replacement) from those images
  (made different by augmentation); `Episodes.filled` counts the copies. Too few eligible classes raise
  UserError.

Support slots are class-major: class j of an episode owns support slots j*K .. j*K+K-1 and query slots
j*Q .. j*Q+Q-1, and its episode-local label is j.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from navee_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Episodes:
    """E episodes. Indices point into the sampler's support / query label arrays; labels are episode-local."""

    classes: np.ndarray  # (E, N) pool labels of the classes drawn
    support: np.ndarray  # (E, N*K)
    support_labels: np.ndarray  # (E, N*K) in 0..N-1
    query: np.ndarray  # (E, N*Q); padding slots hold index 0
    query_labels: np.ndarray  # (E, N*Q)
    query_mask: np.ndarray  # (E, N*Q) False on padding slots
    filled: np.ndarray  # (E, N) support slots of each class holding copies (always 0 with two pools)


class ClassTable:
    """The images of `pool` (indices into `labels`; default: all of them) grouped by class.

    `images` is `pool` stably sorted by label, so each class's images keep their order in `pool`;
    class row r (label `classes[r]`) owns images[start[r] : start[r] + count[r]], and `row[p]` is the row
    of sorted position p. Samplers draw positions into `images` and map them back through it.
    """

    def __init__(self, labels: np.ndarray, pool: np.ndarray | None = None):
        labels = np.asarray(labels)
        pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
        self.images = pool[np.argsort(labels[pool], kind="stable")]
        self.classes, self.start, self.count = np.unique(labels[self.images], return_index=True,
                                                         return_counts=True)
        self.row = np.searchsorted(self.start, np.arange(len(self.images)), side="right") - 1

    def members(self, row: int) -> np.ndarray:
        """The images of class row `row`, in pool order."""
        return self.images[self.start[row]:self.start[row] + self.count[row]]

    def padded(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(table (C, max(1, largest count)) of each class's images padded with 0, counts (C,)) for the
        labels `classes`; a label absent from the pool gets count 0 and a row of padding."""
        classes = np.asarray(classes)
        if not len(self.images):
            return np.zeros((len(classes), 1), np.int64), np.zeros(len(classes), np.int64)
        row = np.minimum(np.searchsorted(self.classes, classes), len(self.classes) - 1)
        counts = np.where(self.classes[row] == classes, self.count[row], 0)
        column = np.arange(max(int(counts.max(initial=0)), 1))
        position = np.minimum(self.start[row][:, None] + column, len(self.images) - 1)
        return np.where(column < counts[:, None], self.images[position], 0), counts

    def other_image_same_class(self, at: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For positions `at` (in classes of >= 2 images), a different position of the same class."""
        r = self.row[at]
        drawn = self.start[r] + rng.integers(0, self.count[r] - 1)
        return np.where(drawn >= at, drawn + 1, drawn)

    def image_of_other_class(self, at: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For positions `at`, a position drawn uniformly from all images of the other classes."""
        r = self.row[at]
        drawn = rng.integers(0, len(self.images) - self.count[r])
        return np.where(drawn >= self.start[r], drawn + self.count[r], drawn)


def _draw(rng: np.random.Generator, table: np.ndarray, counts: np.ndarray, chosen: np.ndarray,
          take: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, valid) of `take` draws without replacement from each chosen class's images, shape (E, N, take).

    Ranking i.i.d. uniform keys (padding keyed last) draws a uniformly random subset in random order. Keys of
    real images never tie (with probability 1), so any correct sort gives the same, reproducible order.
    """
    width = table.shape[1]
    keys = rng.random((*chosen.shape, width))
    chosen_counts = counts[chosen][..., None]
    if counts.min() < width:
        keys[np.arange(width) >= chosen_counts] = 2.0
    pick = np.argsort(keys, axis=-1)[..., :take]
    return np.take(table, chosen[..., None] * width + pick), np.arange(take) < chosen_counts


class EpisodeSampler:
    """N-way K-shot episodes of a support pool and a query pool (evaluation), or of one pool (training,
    `query_labels` None); see the module docstring. The per-class tables are built once for many calls."""

    def __init__(self, support_labels: np.ndarray, query_labels: np.ndarray | None = None):
        self.one_pool = query_labels is None
        support = ClassTable(np.asarray(support_labels))
        if self.one_pool:
            self.table = support
            self.classes = support.classes
            return
        self.classes = support.classes
        self.support_table, self.support_counts = support.padded(self.classes)
        self.query_table, self.query_counts = ClassTable(np.asarray(query_labels)).padded(self.classes)

    def eligible(self, shots: int, queries: int, min_queries: int = 1) -> np.ndarray:
        """Positions in `classes` of the classes an episode may draw: with two pools, >= `shots` support
        and >= `min_queries` query images; with one pool, more than `queries` images."""
        if self.one_pool:
            return np.flatnonzero(self.table.count > queries)
        return np.flatnonzero((self.support_counts >= shots) & (self.query_counts >= min_queries))

    def sample(self, ways: int, shots: int, queries: int, num_episodes: int, rng: np.random.Generator,
               min_queries: int = 1) -> Episodes:
        """`num_episodes` N-way K-shot episodes with Q queries per class (padded with two pools), drawn from
        `rng`. `min_queries` applies to two pools only (one pool always has Q queries per class).

        Evaluation seeds `rng` with np.random.default_rng([seed, ways, shots]), so that a cell's episodes do
        not depend on which other cells are evaluated.
        """
        if self.one_pool:
            return self._sample_one_pool(ways, shots, queries, num_episodes, rng)
        eligible = self.eligible(shots, queries, min_queries)
        if len(eligible) < ways:
            raise ValueError(f"{ways}-way {shots}-shot needs {ways} classes with >= {shots} support and "
                             f">= {min_queries} query images; {len(eligible)} classes qualify")
        s_counts, q_counts = self.support_counts[eligible], self.query_counts[eligible]
        # Tables as wide as the eligible classes need: the width sets how many keys each draw consumes.
        s_table = self.support_table[eligible, :max(int(s_counts.max()), 1)]
        q_table = self.query_table[eligible, :max(int(q_counts.max()), 1)]
        q = min(queries, int(q_counts.max()))
        chosen = np.argsort(rng.random((num_episodes, len(eligible))), axis=1)[:, :ways]
        support, _ = _draw(rng, s_table, s_counts, chosen, shots)
        query, valid = _draw(rng, q_table, q_counts, chosen, q)
        local = np.arange(ways)
        return Episodes(classes=self.classes[eligible][chosen], support=support.reshape(num_episodes, -1),
                        support_labels=np.broadcast_to(np.repeat(local, shots), (num_episodes, ways * shots)),
                        query=np.where(valid, query, 0).reshape(num_episodes, -1),
                        query_labels=np.broadcast_to(np.repeat(local, q), (num_episodes, ways * q)),
                        query_mask=valid.reshape(num_episodes, -1),
                        filled=np.zeros((num_episodes, ways), np.int64))

    def _sample_one_pool(self, ways: int, shots: int, queries: int, num_episodes: int,
                         rng: np.random.Generator) -> Episodes:
        eligible = self.eligible(shots, queries)
        if len(eligible) < ways:
            raise UserError(f"sampler.ways={ways}: only {len(eligible)} classes have more than "
                            f"sampler.queries={queries} images; lower --config.sampler.ways or "
                            f"--config.sampler.queries")
        e, counts = num_episodes, self.table.count[eligible]
        table, _ = self.table.padded(self.classes[eligible])
        chosen = np.argsort(rng.random((e, len(eligible))), axis=1)[:, :ways]
        drawn, _ = _draw(rng, table, counts, chosen, queries + shots)  # queries first, then the support set
        rest = counts[chosen] - queries  # >= 1: images left for the support set after the queries
        copies = rng.integers(0, rest[..., None], size=(e, ways, shots))
        slot = np.arange(shots)
        # Support slot j takes draw Q + j while the class has it, else a copy of one of those draws.
        support = np.take_along_axis(drawn, queries + np.where(slot < rest[..., None], slot, copies), axis=-1)
        local = np.arange(ways)
        return Episodes(classes=self.classes[eligible][chosen], support=support.reshape(e, -1),
                        support_labels=np.broadcast_to(np.repeat(local, shots), (e, ways * shots)),
                        query=drawn[..., :queries].reshape(e, -1),
                        query_labels=np.broadcast_to(np.repeat(local, queries), (e, ways * queries)),
                        query_mask=np.ones((e, ways * queries), bool),
                        filled=np.maximum(shots - rest, 0))
