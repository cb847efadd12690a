"""Exact 1-NN predictions for many N-way K-shot episodes drawn from one support pool and one query pool.

The default grid is 1,250 episodes that touch 31.8 million (query, support image) pairs; reading every
pair's distance costs more than everything else in the grid. Most of those reads are unnecessary: an
episode's nearest support image is usually among the first few images of its query's ranking of the whole
pool. So (`NearestNeighbourTable`):

1. Every (query, support image) pair of the pools gets an expanded squared distance
   |q|^2 + |s|^2 - 2 q.s (one float32 matrix multiply) whose error against the float64 distance is at
   most b(q), a rigorous bound (`navee_jax.evaluate.expansion`).
2. Each query ranks its `depth` nearest support images by that distance.
3. Per (episode, query), one compiled loop (numba) walks the query's ranking until it meets one of the
   episode's M = N*K support images, for at most M positions; if none turns up, it reads the expanded
   distances of all M images instead. Either way it costs at most about 2M reads, and for large episodes
   (M^2 > pool size) the walk usually stops after a few positions.
4. The winner stands when no support image of another class of the episode lies within 2 b(q) of its
   expanded distance: then its float64 distance is provably smaller. Otherwise the images within that margin
   are compared on float64 distances from direct differences.

The result is the 1-NN rule on float64 squared distances of the float32 embeddings (exact for embeddings
whose squared distances are representable, as integer or 1/16-grid values are): the nearest support image
wins, a tie goes to the smallest episode label, which is the first of the tied images in the class-major
support order (`navee_jax.data.episodes.Episodes`). That is the rule of
`navee_jax.evaluate.classifiers.knn_predict` with k=1, decided in float64 instead of float32.
"""

from __future__ import annotations

import numba
import numpy as np

from navee_jax.evaluate.expansion import expansion_error_bound

_RANKING_BYTES = 1 << 27  # scratch for ranking a block of rows, beside the 4 bytes per pair of the table


class NearestNeighbourTable:
    """Expanded distances, error margins and the `depth`-long ranking of every query of the pool."""

    def __init__(self, support: np.ndarray, query: np.ndarray, depth: int = 80):
        self.support = np.ascontiguousarray(support, np.float32)
        self.query = np.ascontiguousarray(query, np.float32)
        for name, emb in (("support", self.support), ("query", self.query)):
            if not np.isfinite(emb).all():
                raise ValueError(f"the {name} embeddings contain NaN or inf: 1-NN is undefined for them; check "
                                 "the network's outputs (a diverged run?)")
        s_sq = np.einsum("ij,ij->i", self.support, self.support)
        q_sq = np.einsum("ij,ij->i", self.query, self.query)
        self.expanded = self.query @ self.support.T
        self.expanded *= -2.0
        self.expanded += q_sq[:, None]
        self.expanded += s_sq[None, :]
        bound = expansion_error_bound(q_sq.astype(np.float64), float(s_sq.max(initial=0.0)),
                                      self.support.shape[1], direct=np.float64)
        # Two expanded distances further apart than this are in the order of their float64 distances
        # (differences and sums of float32 distances are taken in float64, exactly).
        self.margin = 2.0 * bound
        n_support = len(self.support)
        depth = min(depth, n_support)
        # `complete`: the ranking holds the whole pool, so a walk that runs off its end has seen every image.
        self.complete = depth == n_support
        self.ranked = np.empty((len(self.query), depth), np.int32)
        self.ranked_values = np.empty((len(self.query), depth), np.float32)
        # argpartition's int64 indices would triple the table's peak memory: rank a block of rows at a time.
        rows = max(1, _RANKING_BYTES // (8 * max(n_support, 1)))
        for start in range(0, len(self.query), rows):
            block = self.expanded[start:start + rows]
            part = (np.argpartition(block, depth - 1, axis=1)[:, :depth] if 0 < depth < n_support
                    else np.broadcast_to(np.arange(depth), (len(block), depth)))
            values = np.take_along_axis(block, part, axis=1)
            order = np.argsort(values, axis=1)  # equal values are always checked as rivals: any order works
            self.ranked[start:start + rows] = np.take_along_axis(part, order, axis=1)
            self.ranked_values[start:start + rows] = np.take_along_axis(values, order, axis=1)

    def predict(self, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray,
                query_mask: np.ndarray) -> np.ndarray:
        """(E, N*Q) 1-NN labels for E episodes: support (E, N*K) pool indices, class-major with labels
        (E, N*K) in 0..N-1 (`Episodes`), query (E, N*Q) pool indices, `query_mask` False on padding
        (predicted -1)."""
        support, query = np.asarray(support, np.int64), np.asarray(query, np.int64)
        if support.shape[0] != query.shape[0] or support.shape != np.shape(support_labels):
            raise ValueError(f"support {support.shape}, support_labels {np.shape(support_labels)} and query "
                             f"{query.shape} must describe the same episodes")
        return _predict_episodes(self.expanded, self.margin, self.ranked, self.ranked_values, self.complete,
                                 self.support, self.query, support, np.asarray(support_labels, np.int64), query,
                                 np.asarray(query_mask, np.bool_))


@numba.njit(cache=True, nogil=True)
def _predict_episodes(expanded, margin, ranked, ranked_values, complete, support_pool, query_pool, support,
                      support_labels, query, query_mask):
    """`NearestNeighbourTable.predict` (arrays as there): one walk or one read of all M images per query."""
    episodes, m = support.shape
    slot_of = np.full(expanded.shape[1], -1, np.int64)  # pool support index -> slot in the current episode
    pred = np.full(query.shape, -1, np.int64)
    depth = ranked.shape[1]
    for e in range(episodes):
        for j in range(m):
            slot_of[support[e, j]] = j
        for i in range(query.shape[1]):
            if not query_mask[e, i]:
                continue
            q = query[e, i]
            label = -2  # -2: undecided; -1: contested within the margin (decide on float64 distances)
            limit = 0.0
            for p in range(min(m, depth)):  # walk the ranking to the episode's first image
                slot = slot_of[ranked[q, p]]
                if slot < 0:
                    continue
                label = support_labels[e, slot]
                limit = np.float64(ranked_values[q, p]) + margin[q]
                for r in range(p + 1, depth + 1):  # rivals: the episode's images within the margin
                    if r == depth:
                        if not complete:  # the margin may go on past the ranking
                            label = -2
                        break
                    if np.float64(ranked_values[q, r]) > limit:
                        break
                    rival = slot_of[ranked[q, r]]
                    if rival >= 0 and support_labels[e, rival] != label:
                        label = -1
                break
            if label == -2:  # no image of the episode in the walk: read all M expanded distances
                best = np.inf
                for j in range(m):
                    best = min(best, expanded[q, support[e, j]])
                limit = np.float64(best) + margin[q]
                for j in range(m):
                    if np.float64(expanded[q, support[e, j]]) <= limit:
                        if label == -2:
                            label = support_labels[e, j]
                        elif support_labels[e, j] != label:
                            label = -1
            if label == -1:  # the float64 distances of every image within the margin decide
                best = np.inf
                for j in range(m):
                    s = support[e, j]
                    if np.float64(expanded[q, s]) > limit:
                        continue
                    d = 0.0
                    for c in range(query_pool.shape[1]):
                        diff = np.float64(support_pool[s, c]) - np.float64(query_pool[q, c])
                        d += diff * diff
                    if d < best or (d == best and support_labels[e, j] < label):
                        best, label = d, support_labels[e, j]
            pred[e, i] = label
        for j in range(m):
            slot_of[support[e, j]] = -1
    return pred
