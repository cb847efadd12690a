"""N-way K-shot episodes on held-out embeddings: the (N, K) grid and the standard 600-episode protocol.

Episodes are index sets into a support pool and a query pool of embeddings, drawn by the two-pool mode of
`navee_jax.data.episodes.EpisodeSampler` with a numpy generator seeded by (seed, N, K) (deterministic for a
given seed; each (N, K) cell has its own stream, so a cell's episodes do not depend on which other cells are
evaluated, and all classifiers but the MLP, whose eligibility rule differs, see the same episodes), then
every cell is classified in one call over all its episodes: a jitted call vmapped over them
(`navee_jax.evaluate.classifiers`), or for 1-NN one compiled loop over a ranked distance table of the pools
(`navee_jax.evaluate.nearest`). Each cell's result is a `navee_jax.evaluate.records.FewShotCell`.

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

from navee_jax.data.episodes import Episodes, EpisodeSampler
from navee_jax.distances import pairwise_distances
from navee_jax.losses.registry import Distance
from navee_jax.evaluate import classifiers
from navee_jax.evaluate.classifiers import MLPSearch
from navee_jax.evaluate.nearest import NearestNeighbourTable
from navee_jax.evaluate.records import FewShotCell

CLASSIFIERS = ("1nn", "knn", "prototype", "logreg", "mlp")


@partial(jax.jit, static_argnames=("k", "ways"))
def _knn_from_matrix(dist, s_idx, s_lab, q_idx, k, ways):
    d = jax.vmap(lambda s, q: dist[q[:, None], s[None, :]])(s_idx, q_idx)
    return classifiers.knn_from_distances(d, s_lab, k, ways)


@partial(jax.jit, static_argnames=("k", "ways"))
def _knn_from_embeddings(support_emb, query_emb, s_idx, s_lab, q_idx, k, ways):
    return classifiers.knn_predict(support_emb[s_idx], s_lab, query_emb[q_idx], k, ways)


_pairwise_squared = jax.jit(partial(pairwise_distances, metric="squared"))


def _distance_matrix(query_emb: jax.Array, support_emb: jax.Array, distance: Distance | None = None,
                     chunk: int = 1024) -> jax.Array:
    """(Q, S) distances, squared Euclidean unless `distance` is given."""
    fn = distance or _pairwise_squared
    # At least one chunk, so that an empty query pool gives an empty (0, S) matrix.
    return jnp.concatenate([fn(query_emb[i:i + chunk], support_emb)
                            for i in range(0, max(query_emb.shape[0], 1), chunk)])


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
                  max_matrix_bytes: int = 1 << 30, distance: Distance | None = None) -> list[FewShotCell]:
    """Mean episode accuracy and 95% CI for every N-way K-shot cell, one `FewShotCell` per (N, K) in the
    order of `itertools.product(ways, shots)`, its classifier field `classifier`.

    The MLP's cells add details "validation_queries", "selected" and "validation_accuracy", and its mean
    counts only the other queries. A cell is skipped (`FewShotCell.skip`, with the reason) when too few
    classes qualify or k-NN's k exceeds the N*K support images.

    classifier: "1nn", "knn" (k neighbours), "prototype" (nearest class mean), "logreg" (L2 multinomial
    logistic regression with inverse strength C) or "mlp" (PCA + MLP tuned over `mlp`). For the neighbour
    rules, when all query-to-support distances fit in `max_matrix_bytes` (4 bytes each), 1-NN searches
    `navee_jax.evaluate.nearest.NearestNeighbourTable` (exact, decided in float64; that memory plus 128 MB
    of scratch) and k-NN gathers each episode's block of the squared-distance matrix (memory per cell about
    E * (N*Q) * (N*K) * 4 bytes); otherwise each episode computes its own distances in float32.
    `distance` replaces the squared Euclidean distance of the neighbour rules by a method's own ranking (e.g.
    a verification head's, navee_jax.losses.verification): its whole (Q, S) matrix is computed once, whatever
    `max_matrix_bytes`; the other classifiers work on the embeddings as they are.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; available: {', '.join(CLASSIFIERS)}")
    if min(ways) < 2 or min(shots) < 1 or queries < 1 or episodes < 1:
        raise ValueError(f"need ways >= 2, shots >= 1, queries >= 1 and episodes >= 1; got ways={ways}, "
                         f"shots={shots}, queries={queries}, episodes={episodes}")
    mlp = mlp or MLPSearch()
    neighbours = {"1nn": 1, "knn": k}.get(classifier)
    support_np, query_np = np.asarray(support_emb, np.float32), np.asarray(query_emb, np.float32)
    fits = neighbours is not None and (distance is not None or len(query_np) * len(support_np) * 4 <= max_matrix_bytes)
    nearest = NearestNeighbourTable(support_np, query_np) if fits and neighbours == 1 and distance is None else None
    # Device copies only for the classifiers that read them (1-NN's table and the MLP work on the host).
    support_j, query_j = ((None, None) if nearest is not None or classifier == "mlp"
                          else (jnp.asarray(support_np), jnp.asarray(query_np)))
    dist = _distance_matrix(query_j, support_j, distance) if fits and nearest is None else None
    sampler = EpisodeSampler(support_labels, query_labels)
    report: list[FewShotCell] = []
    for n, shot in itertools.product(ways, shots):
        if neighbours is not None and neighbours > n * shot:
            report.append(FewShotCell.skip(n, shot, classifier, episodes,
                                           f"k-NN with k={neighbours} needs >= {neighbours} support images; "
                                           f"an episode has {n * shot}"))
            continue
        try:
            eps = sampler.sample(n, shot, queries, episodes, np.random.default_rng([seed, n, shot]),
                                 min_queries=2 if classifier == "mlp" else 1)
        except ValueError as e:
            report.append(FewShotCell.skip(n, shot, classifier, episodes, str(e)))
            continue
        details: dict[str, Any] = {}
        if classifier == "mlp":
            val, test = validation_split(eps.query_mask, n, mlp.val_fraction)
            acc, config, val_acc = classifiers.mlp_search(
                support_np[eps.support], eps.support_labels, query_np[eps.query], eps.query_labels, val, test, n,
                support_np, mlp)
            details = {"validation_queries": int(val.sum()), "selected": dataclasses.asdict(config),
                       "validation_accuracy": val_acc}
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
        report.append(FewShotCell.from_accuracies(n, shot, classifier, acc, eps.query.shape[1] // n, **details))
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
                      seed: int = 0, **options: Any) -> list[FewShotCell]:
    """The usual few-shot benchmark: 5-way 1-shot and 5-way 5-shot over 600 episodes, mean +- 95% CI.

    `options` are passed to `few_shot_grid` (k, C, mlp, max_matrix_bytes).
    """
    return few_shot_grid(support_emb, support_labels, query_emb, query_labels, ways=(5,), shots=(1, 5),
                         queries=queries, episodes=episodes, seed=seed, classifier=classifier, **options)


def few_shot_report(support_emb: np.ndarray, support_labels: np.ndarray, query_emb: np.ndarray,
                    query_labels: np.ndarray, ways: int, shots: tuple[int, ...], queries: int,
                    num_episodes: int, seed: int, classifier: str = "1nn",
                    distance: Distance | None = None) -> list[FewShotCell]:
    """The held-out evaluator's report: one N, several K (`few_shot_grid` with a single row)."""
    return few_shot_grid(support_emb, support_labels, query_emb, query_labels, ways=(ways,), shots=tuple(shots),
                         queries=queries, episodes=num_episodes, seed=seed, classifier=classifier, distance=distance)
