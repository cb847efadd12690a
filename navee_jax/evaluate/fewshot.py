"""N-way K-shot episodes on held-out embeddings: the (N, K) grid and the standard 600-episode protocol.

Episodes are index sets into a support pool and a query pool of embeddings. They are sampled with a seeded
numpy generator (deterministic for a given seed; each (N, K) cell has its own stream, so a cell's episodes do
not depend on which other cells are evaluated, and all classifiers but the MLP, whose eligibility rule differs,
see the same episodes), then every cell is classified in one call over all its episodes: a jitted call
vmapped over them (`navee_jax.evaluate.classifiers`), or for 1-NN one compiled loop over a ranked
distance table of the pools (`navee_jax.evaluate.nearest`).

Definitions:

* A class can appear in an episode of K shots if it has >= K support images and >= 1 query image (>= 2 for
  the MLP, which needs validation queries). A cell needs N such classes; otherwise it is skipped, and the
  report says why.
* Each episode draws N distinct eligible classes uniformly, K support images per class without replacement,
  and up to Q query images per class, Q = min(`queries`, the most query images any eligible class has). A class
  with fewer than Q query images uses all of them; the remaining slots are padding, masked out of the accuracy,
  so every episode of a cell has the same static shape.
* An episode's accuracy is the fraction of its (unpadded) queries classified correctly; a cell reports the
  mean over episodes and the 95% half-width 1.96 * std / sqrt(E), std with ddof=1 (NaN for one episode).
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from navee_jax.evaluate import classifiers
from navee_jax.evaluate.classifiers import MLPSearch
from navee_jax.evaluate.nearest import NearestNeighbourTable
from navee_jax.losses.distances import pairwise_distances

CLASSIFIERS = ("1nn", "knn", "prototype", "logreg", "mlp")


@dataclasses.dataclass(frozen=True)
class Episodes:
    """E episodes of one cell. Indices point into the support / query pools; labels are episode-local.

    Support slots are class-major: class j of the episode owns slots j*K .. j*K+K-1 (and query slots
    j*Q .. j*Q+Q-1), so local label j is the j-th class drawn.
    """

    classes: np.ndarray  # (E, N) pool labels of the classes drawn
    support: np.ndarray  # (E, N*K)
    support_labels: np.ndarray  # (E, N*K) in 0..N-1
    query: np.ndarray  # (E, N*Q); padding slots hold index 0
    query_labels: np.ndarray  # (E, N*Q)
    query_mask: np.ndarray  # (E, N*Q) False on padding slots


def _by_class(labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(table (C, max count) of pool indices padded with 0, counts (C,)) for each class in `classes`."""
    order = np.argsort(labels, kind="stable")
    grouped = labels[order]
    start = np.searchsorted(grouped, classes, side="left")
    counts = np.searchsorted(grouped, classes, side="right") - start
    column = np.arange(max(int(counts.max(initial=0)), 1))
    if not len(order):
        return np.zeros((len(classes), 1), np.int64), counts
    position = np.minimum(start[:, None] + column, len(order) - 1)
    return np.where(column < counts[:, None], order[position], 0), counts


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


class EpisodePool:
    """The classes of a support and a query pool with per-class index tables, built once for many cells."""

    def __init__(self, support_labels: np.ndarray, query_labels: np.ndarray):
        support_labels, query_labels = np.asarray(support_labels), np.asarray(query_labels)
        self.classes = np.unique(support_labels)
        self.support_table, self.support_counts = _by_class(support_labels, self.classes)
        self.query_table, self.query_counts = _by_class(query_labels, self.classes)

    def eligible(self, shots: int, min_queries: int = 1) -> np.ndarray:
        """Positions in `classes` of the classes with >= `shots` support and >= `min_queries` query images."""
        return np.flatnonzero((self.support_counts >= shots) & (self.query_counts >= min_queries))

    def sample(self, ways: int, shots: int, queries: int, num_episodes: int, seed: int,
               min_queries: int = 1) -> Episodes:
        """`sample_episodes` on this pool."""
        eligible = self.eligible(shots, min_queries)
        if len(eligible) < ways:
            raise ValueError(f"{ways}-way {shots}-shot needs {ways} classes with >= {shots} support and "
                             f">= {min_queries} query images; {len(eligible)} classes qualify")
        s_counts, q_counts = self.support_counts[eligible], self.query_counts[eligible]
        # Tables as wide as the eligible classes need: the width sets how many keys each draw consumes.
        s_table = self.support_table[eligible, :max(int(s_counts.max()), 1)]
        q_table = self.query_table[eligible, :max(int(q_counts.max()), 1)]
        q = min(queries, int(q_counts.max()))
        rng = np.random.default_rng([seed, ways, shots])
        chosen = np.argsort(rng.random((num_episodes, len(eligible))), axis=1)[:, :ways]
        support, _ = _draw(rng, s_table, s_counts, chosen, shots)
        query, valid = _draw(rng, q_table, q_counts, chosen, q)
        local = np.arange(ways)
        return Episodes(classes=self.classes[eligible][chosen], support=support.reshape(num_episodes, -1),
                        support_labels=np.broadcast_to(np.repeat(local, shots), (num_episodes, ways * shots)),
                        query=np.where(valid, query, 0).reshape(num_episodes, -1),
                        query_labels=np.broadcast_to(np.repeat(local, q), (num_episodes, ways * q)),
                        query_mask=valid.reshape(num_episodes, -1))


def sample_episodes(support_labels: np.ndarray, query_labels: np.ndarray, ways: int, shots: int, queries: int,
                    num_episodes: int, seed: int, min_queries: int = 1) -> Episodes:
    """Seeded N-way K-shot episodes with up to Q queries per class (see the module docstring).

    Raises ValueError if fewer than `ways` classes are eligible (`EpisodePool.eligible`).
    """
    return EpisodePool(support_labels, query_labels).sample(ways, shots, queries, num_episodes, seed, min_queries)


@partial(jax.jit, static_argnames=("k", "ways"))
def _knn_from_matrix(dist, s_idx, s_lab, q_idx, k, ways):
    d = jax.vmap(lambda s, q: dist[q[:, None], s[None, :]])(s_idx, q_idx)
    return classifiers.knn_from_distances(d, s_lab, k, ways)


@partial(jax.jit, static_argnames=("k", "ways"))
def _knn_from_embeddings(support_emb, query_emb, s_idx, s_lab, q_idx, k, ways):
    return classifiers.knn_predict(support_emb[s_idx], s_lab, query_emb[q_idx], k, ways)


_pairwise_squared = jax.jit(partial(pairwise_distances, metric="squared"))


def _distance_matrix(query_emb: jax.Array, support_emb: jax.Array, chunk: int = 1024) -> jax.Array:
    # At least one chunk, so that an empty query pool gives an empty (0, S) matrix.
    return jnp.concatenate([_pairwise_squared(query_emb[i:i + chunk], support_emb)
                            for i in range(0, max(query_emb.shape[0], 1), chunk)])


def accuracy_summary(acc: np.ndarray) -> dict[str, float]:
    """{"accuracy": mean episode accuracy, "ci95": its 95% half-width} (see the module docstring)."""
    ci = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else float("nan")
    return {"accuracy": float(acc.mean()), "ci95": float(ci)}


def validation_split(query_mask: np.ndarray, ways: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) masks over (E, N*Q) query slots, for tuning the MLP.

    Validation takes the first max(1, round(val_fraction * Q)) slots of each class (slots are in random order)
    but always leaves a class at least one unpadded test query; the rest are test queries.
    """
    e, n = query_mask.shape
    per_class = query_mask.reshape(e, ways, n // ways)
    q = per_class.shape[2]
    v = max(1, round(val_fraction * q))
    limit = np.minimum(v, per_class.sum(axis=2, keepdims=True) - 1)
    val = np.arange(q) < limit
    return val.reshape(e, n), (per_class & ~val).reshape(e, n)


def few_shot_grid(support_emb: np.ndarray, support_labels: np.ndarray, query_emb: np.ndarray,
                  query_labels: np.ndarray, ways: tuple[int, ...] = (2, 5, 10, 20, 50),
                  shots: tuple[int, ...] = (1, 2, 3, 5, 10), queries: int = 15, episodes: int = 50, seed: int = 0,
                  classifier: str = "1nn", *, k: int = 5, C: float = 1.0, mlp: MLPSearch | None = None,
                  max_matrix_bytes: int = 1 << 30) -> dict[str, dict[str, Any]]:
    """Mean episode accuracy and 95% CI for every N-way K-shot cell, keyed "N-way K-shot".

    A cell reports {"accuracy", "ci95", "episodes", "queries_per_class"} (the MLP adds "validation_queries",
    "selected" and "validation_accuracy", and its accuracy counts only the other queries), or {"skipped": why}
    when too few classes qualify or k-NN's k exceeds the N*K support images.

    classifier: "1nn", "knn" (k neighbours), "prototype" (nearest class mean), "logreg" (L2 multinomial
    logistic regression with inverse strength C) or "mlp" (PCA + MLP tuned over `mlp`). For the neighbour
    rules, when all query-to-support distances fit in `max_matrix_bytes` (4 bytes each), 1-NN searches
    `navee_jax.evaluate.nearest.NearestNeighbourTable` (exact, decided in float64; that memory plus 128 MB
    of scratch) and k-NN gathers each episode's block of the squared-distance matrix (memory per cell about
    E * (N*Q) * (N*K) * 4 bytes); otherwise each episode computes its own distances in float32.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; available: {', '.join(CLASSIFIERS)}")
    if min(ways) < 2 or min(shots) < 1 or queries < 1 or episodes < 1:
        raise ValueError(f"need ways >= 2, shots >= 1, queries >= 1 and episodes >= 1; got ways={ways}, "
                         f"shots={shots}, queries={queries}, episodes={episodes}")
    mlp = mlp or MLPSearch()
    neighbours = {"1nn": 1, "knn": k}.get(classifier)
    support_np, query_np = np.asarray(support_emb, np.float32), np.asarray(query_emb, np.float32)
    fits = neighbours is not None and len(query_np) * len(support_np) * 4 <= max_matrix_bytes
    nearest = NearestNeighbourTable(support_np, query_np) if fits and neighbours == 1 else None
    # Device copies only for the classifiers that read them (1-NN's table and the MLP work on the host).
    support_j, query_j = ((None, None) if nearest is not None or classifier == "mlp"
                          else (jnp.asarray(support_np), jnp.asarray(query_np)))
    dist = _distance_matrix(query_j, support_j) if fits and nearest is None else None
    pool = EpisodePool(support_labels, query_labels)
    report: dict[str, dict[str, Any]] = {}
    for n, shot in itertools.product(ways, shots):
        name = f"{n}-way {shot}-shot"
        if neighbours is not None and neighbours > n * shot:
            report[name] = {"skipped": f"k-NN with k={neighbours} needs >= {neighbours} support images; "
                                       f"an episode has {n * shot}"}
            continue
        try:
            eps = pool.sample(n, shot, queries, episodes, seed, min_queries=2 if classifier == "mlp" else 1)
        except ValueError as e:
            report[name] = {"skipped": str(e)}
            continue
        cell: dict[str, Any] = {"episodes": episodes, "queries_per_class": eps.query.shape[1] // n}
        if classifier == "mlp":
            val, test = validation_split(eps.query_mask, n, mlp.val_fraction)
            acc, config, val_acc = classifiers.mlp_search(
                support_np[eps.support], eps.support_labels, query_np[eps.query], eps.query_labels, val, test, n,
                support_np, mlp)
            cell.update(validation_queries=int(val.sum()), selected=dataclasses.asdict(config),
                        validation_accuracy=val_acc)
        else:
            if neighbours is None:
                pred = _predict_from_embeddings(classifier, support_j, query_j, eps, n, C)
            elif nearest is not None:
                pred = nearest.predict(eps.support, eps.support_labels, eps.query, eps.query_mask)
            elif dist is not None:
                pred = _knn_from_matrix(dist, eps.support, eps.support_labels, eps.query, neighbours, n)
            else:
                pred = _knn_from_embeddings(support_j, query_j, eps.support, eps.support_labels, eps.query,
                                            neighbours, n)
            hits = (np.asarray(pred) == eps.query_labels) & eps.query_mask
            acc = hits.sum(axis=1) / eps.query_mask.sum(axis=1)
        report[name] = {**accuracy_summary(acc), **cell}
    return report


def _predict_from_embeddings(classifier: str, support_emb: jax.Array, query_emb: jax.Array, eps: Episodes,
                             ways: int, C: float) -> jax.Array:
    """(E, N*Q) predictions of one cell's episodes by nearest prototype or logistic regression."""
    s, q = support_emb[eps.support], query_emb[eps.query]
    if classifier == "prototype":
        return classifiers.prototype_predict(s, eps.support_labels, q, ways)
    w, b = classifiers.logistic_regression_fit(s, eps.support_labels, ways, C)
    return jnp.argmax(classifiers.logistic_regression_proba(w, b, q), axis=-1)


def standard_protocol(support_emb: np.ndarray, support_labels: np.ndarray, query_emb: np.ndarray,
                      query_labels: np.ndarray, classifier: str = "1nn", queries: int = 15, episodes: int = 600,
                      seed: int = 0, **options: Any) -> dict[str, dict[str, Any]]:
    """The usual few-shot benchmark: 5-way 1-shot and 5-way 5-shot over 600 episodes, mean +- 95% CI.

    `options` are passed to `few_shot_grid` (k, C, mlp, max_matrix_bytes).
    """
    return few_shot_grid(support_emb, support_labels, query_emb, query_labels, ways=(5,), shots=(1, 5),
                         queries=queries, episodes=episodes, seed=seed, classifier=classifier, **options)


def few_shot_report(support_emb: np.ndarray, support_labels: np.ndarray, query_emb: np.ndarray,
                    query_labels: np.ndarray, ways: int, shots: tuple[int, ...], queries: int,
                    num_episodes: int, seed: int, classifier: str = "1nn") -> dict[str, dict]:
    """The held-out evaluator's report: one N, several K (`few_shot_grid` with a single row)."""
    return few_shot_grid(support_emb, support_labels, query_emb, query_labels, ways=(ways,), shots=tuple(shots),
                         queries=queries, episodes=num_episodes, seed=seed, classifier=classifier)
