"""Exact 1-NN predictions for many N-way K-shot episodes drawn from one support pool and one query pool.

The default grid is 1,250 episodes that touch 31.8 million (query, support image) pairs; reading every
pair's distance costs more than everything else in the grid. Most of those reads are unnecessary: an
episode's nearest support image is usually among the first few images of its query's ranking of the whole
pool. So (`NearestNeighbourTable`):

1. Every (query, support image) pair of the pools gets an expanded squared distance
   |q|^2 + |s|^2 - 2 q.s (one float32 matrix multiply) whose error against the float64 distance is at
   most b(q), a rigorous bound (`navee_jax.evaluate.expansion`).
2. Each query ranks its `depth` nearest support images by that distance.
3. Per cell (`predict`), the cheaper of two searches:
   * scan: for every query image, walk its ranking once for all the episodes it appears in. Each support
     image carries a bitmask of the episodes (up to 52 per pass) whose support set holds it; the first
     position where an episode's bit appears is that episode's nearest support image.
   * gather: read the expanded distance of every (query, support image) pair of each episode and take
     per-class minima (small episodes, where this reads fewer values than the scan).
4. A prediction stands when no support image of another class of the same episode is within 2 b(q) of the
   winner's expanded distance: then its exact distance is provably larger. Otherwise the candidates within
   that margin (or, rarely, the whole episode) are compared on exact float64 distances.

The result is the 1-NN rule on float64 squared distances of the float32 embeddings (exact for embeddings
whose squared distances are representable, as integer or 1/16-grid values are): the nearest support image
wins, a tie goes to the smallest episode label, which is the first of the tied images in the class-major
support order (`navee_jax.evaluate.fewshot.Episodes`). That is the rule of
`navee_jax.evaluate.classifiers.knn_predict` with k=1, decided in float64 instead of float32.
"""

from __future__ import annotations

import math

import numpy as np

from navee_jax.evaluate.expansion import expansion_error_bound

_GROUP = 52  # episodes per scan pass: a sum of distinct powers of two below 2**52 is exact in float64
_REACH = 8  # ranking positions past a scan hit checked for rivals before deciding on the whole episode


class NearestNeighbourTable:
    """Expanded distances, error margins and the `depth`-long ranking of every query of the pool."""

    def __init__(self, support: np.ndarray, query: np.ndarray, depth: int = 80):
        self.support = np.ascontiguousarray(support, np.float32)
        self.query = np.ascontiguousarray(query, np.float32)
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
        # Ranked positions 0..depth-1 are scanned; the rest of the kept columns (up to _REACH more) are
        # only read to bound a hit's rivals. `complete` says the ranking holds the whole pool.
        kept = min(depth + _REACH, n_support)
        self.depth, self.complete = min(depth, n_support), kept == n_support
        part = (np.argpartition(self.expanded, kept - 1, axis=1)[:, :kept] if kept < n_support
                else np.broadcast_to(np.arange(n_support), self.expanded.shape))
        values = np.take_along_axis(self.expanded, part, axis=1)
        order = np.argsort(values, axis=1)  # equal values are always checked as rivals, so any order works
        # Transposed (position, query): a scan reads one position for many queries at a time.
        self.ranked = np.ascontiguousarray(np.take_along_axis(part, order, axis=1).T.astype(np.int32))
        self.ranked_values = np.ascontiguousarray(np.take_along_axis(values, order, axis=1).T)
        # crowded[p, q]: the next position may hold a rival of a hit at p (it is within the margin, or it was
        # cut off the ranking).
        gaps = np.diff(self.ranked_values.astype(np.float64), axis=0)
        self.crowded = np.concatenate([gaps <= self.margin, np.full((1, len(self.query)), not self.complete)])

    def predict(self, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray,
                query_mask: np.ndarray, ways: int, search: str = "auto") -> np.ndarray:
        """(E, N*Q) 1-NN labels for E episodes: support (E, N*K) pool indices, class-major with labels
        (E, N*K) in 0..ways-1 (`Episodes`), query (E, N*Q) pool indices, `query_mask` False on padding
        (predicted -1). `search`: "scan", "gather" or "auto" (whichever reads fewer values); the same
        predictions either way."""
        if search not in ("auto", "scan", "gather"):
            raise ValueError(f"search={search!r}: expected 'auto', 'scan' or 'gather'")
        pred = np.full(query.shape, -1, np.int64)
        n_queries = int(query_mask.sum())
        if n_queries == 0:
            return pred
        n_support = support.shape[1]
        distinct = np.count_nonzero(np.bincount(query[query_mask], minlength=len(self.query)))
        # Scan: every query image of the pool walks `steps` positions down its ranking; with a fraction f of the
        # pool in an episode, an image in m episodes has a hit in all of them after about ln(m) / f positions
        # (fewer when images of its own class come first); the episodes still without a hit are gathered.
        fraction = n_support / len(self.support)
        steps = min(self.depth, math.ceil((math.log(n_queries / distinct) + 0.5) / fraction))
        scan = 5 * len(self.query) * steps < n_queries * n_support  # measured: a scan step costs ~5 reads
        if search == "scan" or (search == "auto" and scan):
            for start in range(0, len(support), _GROUP):
                rows = slice(start, start + _GROUP)
                pred[rows] = self._scan(support[rows], support_labels[rows], query[rows], query_mask[rows],
                                        steps)
            missing = np.nonzero((pred < 0) & query_mask)
            if len(missing[0]):  # the scan went `steps` deep without a hit
                pred[missing] = self._gather(support[missing[0]], support_labels[missing[0]],
                                             query[missing][:, None], ways)[:, 0]
        else:
            pred = np.where(query_mask, self._gather(support, support_labels, query, ways), -1)
        return pred

    def _scan(self, support, support_labels, query, query_mask, steps):
        """Predictions of up to _GROUP episodes by one walk down each query image's ranking; -1 where the
        first `steps` positions hold none of the episode's support images."""
        episodes = len(support)
        bit = np.ldexp(1.0, np.arange(episodes))
        member = np.bincount(support.ravel(), np.repeat(bit, support.shape[1]),
                             len(self.support)).astype(np.uint64)
        wanted = np.bincount(query[query_mask], np.broadcast_to(bit[:, None], query.shape)[query_mask],
                             len(self.query)).astype(np.uint64)
        found = np.take(member, self.ranked[:steps]) & wanted  # (steps, query images): episode bits
        seen = np.bitwise_or.accumulate(found, axis=0)
        found[1:] &= ~seen[:-1]  # each episode's first hit only
        # (position, query image, episode) of every first hit; an entry can hold several episodes' bits.
        flat = np.flatnonzero(found)
        rest = np.take(found, flat)
        low = rest & (~rest + np.uint64(1))
        hits = [(flat, _bit_index(low))]
        more = np.flatnonzero(rest ^ low)
        rest = (rest ^ low)[more]
        while len(more):
            low = rest & (~rest + np.uint64(1))
            hits.append((np.take(flat, more), _bit_index(low)))
            rest ^= low
            keep = rest != 0
            more, rest = more[keep], rest[keep]
        flat, episode = (np.concatenate(parts) for parts in zip(*hits))
        position, q = np.divmod(flat, found.shape[1])
        out = np.full(query.shape, -1, np.int64)
        owner = np.full((episodes, len(self.support)), -1, np.int32)  # pool support index -> episode label
        np.put_along_axis(owner, support, support_labels, axis=1)
        table = np.full((episodes, len(self.query)), -1, np.int32)
        table[episode, q] = self._settle(owner, support, support_labels, episode, q, position)
        out[query_mask] = np.take_along_axis(table, query, axis=1)[query_mask]
        return out

    def _settle(self, owner, support, support_labels, episode, q, position):
        """Labels of scan hits (episode, query image q, ranked position): the hit's own label unless a support
        image of another class lies within the margin; then the candidates within it are compared exactly."""
        at = position * self.ranked.shape[1] + q
        label = np.take(owner, episode * owner.shape[1] + np.take(self.ranked, at))
        crowded = np.flatnonzero(np.take(self.crowded, at))
        if len(crowded):
            label[crowded] = self._walk(owner, support, support_labels, episode[crowded], q[crowded],
                                        position[crowded], label[crowded])
        return label

    def _walk(self, owner, support, support_labels, episode, q, position, label):
        """`_settle` for hits whose next ranked position is within the margin."""
        kept, width = self.ranked.shape
        ranked, values, owned = self.ranked.ravel(), self.ranked_values.ravel(), owner.ravel()
        at = position * width + q
        hit = ranked[at]
        limit = values[at].astype(np.float64) + self.margin[q]
        # Walk on from each hit while the ranking stays within its margin (rarely more than a step), collecting
        # that episode's support images there as rivals.
        contested, open_ended = np.zeros(len(q), bool), np.zeros(len(q), bool)
        pairs = [(np.arange(len(q)), hit, label)]
        alive = np.arange(len(q))
        for step in range(1, _REACH + 1):
            inside = position[alive] + step < kept
            open_ended[alive[~inside]] = not self.complete  # the ranking was cut before the margin ended
            alive = alive[inside]
            at = (position[alive] + step) * width + q[alive]
            near = values[at] <= limit[alive]
            alive, at = alive[near], at[near]
            if not len(alive):
                break
            rival = ranked[at]
            rival_label = owned[episode[alive] * owner.shape[1] + rival]
            mine = rival_label >= 0
            contested[alive[mine & (rival_label != label[alive])]] = True
            pairs.append((alive[mine], rival[mine], rival_label[mine]))
        else:
            open_ended[alive] = True  # still within the margin after _REACH steps
        unsure = contested & ~open_ended
        if unsure.any():
            which, rows, labels = (np.concatenate(parts) for parts in zip(*pairs))
            keep = unsure[which]
            label[unsure] = _nearest_of_pairs(which[keep], self.query[q[which[keep]]],
                                              self.support[rows[keep]], labels[keep])
        far = np.flatnonzero(open_ended)
        if len(far):  # decide on the episode's whole support set
            which = np.repeat(far, support.shape[1])
            label[far] = _nearest_of_pairs(which, self.query[q[which]], self.support[support[episode[far]].ravel()],
                                           support_labels[episode[far]].ravel())
        return label

    def _gather(self, support, support_labels, query, ways):
        """(E, Q) labels from the expanded distances of each of an episode's Q queries to all of its support
        images (E, N*K): the class minima, unless the runner-up class is within the margin."""
        shots = support.shape[1] // ways
        # Class-major (N*K, E, Q): every reduction below runs over a leading axis, i.e. over long rows.
        d = np.take(self.expanded, support.T[:, :, None] + (query * self.expanded.shape[1])[None])
        per_class = d.reshape(ways, shots, *query.shape).min(axis=1)
        best = per_class.min(axis=0)
        label = np.zeros(query.shape, np.int64)
        for j in range(ways - 1, 0, -1):  # the smallest label among equal minima
            label[per_class[j] == best] = j
        label[per_class[0] == best] = 0
        rival = np.where(np.arange(ways)[:, None, None] == label, np.inf, per_class).min(axis=0)
        margin = self.margin[query]
        e, j = np.nonzero(rival - best.astype(np.float64) <= margin)
        if len(e):  # decide on the support images within the margin of the best, in float64
            slot, unsure = np.nonzero(d[:, e, j] <= best[e, j] + margin[e, j])
            label[e, j] = _nearest_of_pairs(unsure, self.query[query[e, j][unsure]],
                                            self.support[support[e[unsure], slot]],
                                            support_labels[e[unsure], slot])
        return label


def _bit_index(powers_of_two: np.ndarray) -> np.ndarray:
    """log2 of uint64 powers of two: the number of bits below the set one."""
    return np.bitwise_count(powers_of_two - np.uint64(1)).astype(np.int64)


def _nearest_of_pairs(group: np.ndarray, query: np.ndarray, support: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each distinct value of `group`, in increasing order, the label of its pair (query row, support row)
    with the smallest float64 squared distance, a tie going to the smallest label."""
    diff = support.astype(np.float64) - query.astype(np.float64)
    d = np.einsum("pd,pd->p", diff, diff)
    order = np.lexsort((labels, d, group))
    first = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    return labels[order][first]
