"""Retrieval metrics: each query ranks the whole gallery by distance (mAP, MAP@R, Recall@K).

A gallery item is relevant to a query when it has the query's label. Definitions, per query:

* AP (mean over queries: mAP) ranks equal distances as one block, exactly as
  `sklearn.metrics.average_precision_score(relevant, -distance)` treats tied scores: every relevant item in a
  block gets the precision at the block's end. A collapsed embedding therefore scores the base rate, never a
  lucky sort order.
* Recall@K is 1 if any of the K nearest gallery items is relevant (K larger than the gallery: all of it).
* MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check") with R = the number of relevant gallery
  items: 1/R * sum_{i=1..R} P(i) * rel(i), where P(i) is the precision of the first i ranked items.

Recall@K and MAP@R rank by (distance, gallery index): of equally distant items the earlier gallery item comes
first, so results are deterministic and reproducible with a stable sort. Queries with no relevant gallery item
have none of these metrics; they are excluded from every mean and counted ("queries_without_relevant").

Metrics: "euclidean" (ranked by the squared distance: the same order, but rounding a square root can merge two
distinct distances into a tie), "squared" (identical results) or "cosine". Negative distances, which only
rounding produces (1 - cos of identical directions), count as 0; NaN distances raise ValueError.
"""

from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from navee_jax.distances import pairwise_distances
from navee_jax.losses.registry import Distance


@partial(jax.jit, static_argnames=("metric",))
def _distances(query: jax.Array, gallery: jax.Array, metric: str) -> jax.Array:
    return pairwise_distances(query, gallery, "squared" if metric == "euclidean" else metric)


def _sorted_rows(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted values) of each row by (distance, column); equal sorted values mean tied distances.

    float32 rows are sorted as one 64-bit key per entry (the distance's bits, then the column): a plain SIMD
    sort of unique keys, several times faster than numpy's stable argsort, giving the same order. Needs
    distances >= +0.0 (`ranking_metrics` ensures it).
    """
    if distances.dtype != np.float32:
        order = np.argsort(distances, axis=1, kind="stable")
        return order, np.take_along_axis(distances, order, axis=1)
    keys = np.empty(distances.shape, np.uint64)
    words = keys.view(np.uint32).reshape(*keys.shape, 2)
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    words[..., high] = distances.view(np.uint32)  # for floats >= +0.0, unsigned bit order is float order
    words[..., low] = np.arange(distances.shape[1], dtype=np.uint32)
    keys.sort(axis=1)
    return words[..., low].astype(np.intp), words[..., high]


def ranking_metrics(distances: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Per-row {"ap", "map_at_r", "recall_at_K" for K in ks} of ranking columns by ascending distance.

    distances, relevant: (n, m). Rows with nothing relevant get NaN everywhere. After the sort, work is
    proportional to the number of relevant entries, found by their ranks. Negative distances count as 0.
    """
    if np.isnan(distances).any():
        raise ValueError("NaN distances cannot be ranked: the embeddings are not finite")
    n, m = distances.shape
    # Negative distances arise only from rounding (1 - cos of identical directions): they count as 0, and the
    # `where` also turns -0.0 into +0.0.
    order, values = _sorted_rows(np.where(distances > 0, distances, distances.dtype.type(0)))
    rows, pos = np.nonzero(np.take_along_axis(relevant, order, axis=1))  # row-major: ranks ascend in a row
    num_relevant = np.bincount(rows, minlength=n)
    first = np.cumsum(num_relevant) - num_relevant  # each row's first entry in (rows, pos)
    hits = np.arange(len(rows)) - first[rows] + 1  # relevant items ranked at or before pos
    # Tie blocks: a relevant entry's block ends at the first block end at or after it (each row's last entry
    # ends a block); every relevant item of a block is scored with the precision at the block's end.
    block_end = np.ones((n, m), dtype=bool)
    block_end[:, :-1] = values[:, :-1] != values[:, 1:]
    ends = np.flatnonzero(block_end)
    flat = rows * m + pos
    end = ends[np.searchsorted(ends, flat)]  # flat index of the block's last entry
    end_hits = np.searchsorted(flat, end, side="right") - first[rows]  # relevant items up to the block's end
    r = np.maximum(num_relevant, 1)
    out = {"ap": np.bincount(rows, end_hits / (end - rows * m + 1), minlength=n) / r,
           "map_at_r": np.bincount(rows, np.where(pos < r[rows], hits / (pos + 1), 0.0), minlength=n) / r}
    scored = num_relevant > 0
    first_hit = np.full(n, m)
    first_hit[scored] = pos[first[scored]]
    for k in ks:
        out[f"recall_at_{k}"] = (first_hit < k).astype(np.float64)
    return {name: np.where(scored, v, np.nan) for name, v in out.items()}


def retrieval_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                      metric: str = "euclidean", ks: tuple[int, ...] = (1, 5, 10),
                      chunk: int = 1024, distance: Distance | None = None) -> dict[str, float | int]:
    """{"map", "map_at_r", "recall_at_K" for K in ks, "queries_scored", "queries_without_relevant"}.

    Means over the queries that have a relevant gallery item (NaN if none has). Queries are processed `chunk`
    at a time, so the largest distance matrix is chunk x gallery: peak host memory is about
    40 bytes * chunk * len(gallery) (float32 distances of this chunk and the next, computed meanwhile, then the
    64-bit sort keys, the order and the relevance), e.g. 4 GB for chunk=1024 and a 100k-image gallery; lower
    `chunk` for larger galleries. `distance` (non-negative; compiled, as it is called per chunk) ranks
    instead of `metric`: a method's own ranking, e.g. a verification head's (navee_jax.losses.verification).
    """
    if chunk < 1 or any(k < 1 for k in ks):
        raise ValueError(f"chunk and every K must be >= 1; got chunk={chunk}, ks={ks}")
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    gallery_j = jnp.asarray(gallery)

    by = distance or partial(_distances, metric=metric)

    def distances(start: int) -> jax.Array:
        return by(jnp.asarray(query[start:start + chunk]), gallery_j)

    parts, upcoming = [], distances(0) if len(query) else None
    for start in range(0, len(query), chunk):
        d = np.asarray(upcoming)
        if start + chunk < len(query):  # dispatched asynchronously: computed while this chunk is ranked
            upcoming = distances(start + chunk)
        relevant = query_labels[start:start + chunk, None] == gallery_labels[None, :]
        parts.append(ranking_metrics(d, relevant, tuple(ks)))
    names = ["ap", "map_at_r", *(f"recall_at_{k}" for k in ks)]
    per_query = {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in names}
    scored = ~np.isnan(per_query["ap"])
    out: dict[str, float | int] = {("map" if name == "ap" else name): float(v[scored].mean()) if scored.any()
                                   else float("nan") for name, v in per_query.items()}
    out.update(queries_scored=int(scored.sum()), queries_without_relevant=int((~scored).sum()))
    return out
