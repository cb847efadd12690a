"""Retrieval mAP as in the study: each query ranks all support images by Euclidean distance."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from navee_jax.losses.distances import pairwise_distances


def average_precision_from_distances(distances: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-row AP of ranking columns by ascending distance; NaN for rows with nothing relevant.

    Equal distances are ranked as one block, exactly as sklearn.metrics.average_precision_score
    treats tied scores, so a collapsed embedding cannot score well by a lucky sort order.
    """
    order = np.argsort(distances, axis=1, kind="stable")
    d = np.take_along_axis(distances, order, axis=1)
    rel = np.take_along_axis(relevant, order, axis=1).astype(np.float64)
    n = d.shape[1]
    position = np.arange(n)
    last_of_block = np.ones_like(d, dtype=bool)
    last_of_block[:, :-1] = d[:, :-1] != d[:, 1:]
    # Index of the last element of each element's tie block: running min from the right.
    block_end = np.minimum.accumulate(np.where(last_of_block, position, n)[:, ::-1], axis=1)[:, ::-1]
    hits = np.cumsum(rel, axis=1)
    precision_at_block_end = np.take_along_axis(hits, block_end, axis=1) / (block_end + 1)
    num_relevant = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, (rel * precision_at_block_end).sum(axis=1) / num_relevant, np.nan)


def mean_average_precision(query: np.ndarray, query_labels: np.ndarray, support: np.ndarray,
                           support_labels: np.ndarray, chunk: int = 1024) -> tuple[float, int]:
    """(mAP over queries that have a relevant support image, number of such queries)."""
    aps = []
    support_j = jnp.asarray(support)
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk]
        d = np.asarray(pairwise_distances(jnp.asarray(q), support_j), dtype=np.float64)
        rel = query_labels[start:start + chunk, None] == support_labels[None, :]
        aps.append(average_precision_from_distances(d, rel))
    aps = np.concatenate(aps)
    scored = ~np.isnan(aps)
    return (float(aps[scored].mean()) if scored.any() else float("nan")), int(scored.sum())
