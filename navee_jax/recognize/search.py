"""Exact k-nearest-neighbour search over a gallery, in jitted chunks so memory stays bounded.

Queries are processed `query_chunk` at a time and the gallery `gallery_chunk` rows at a time: at most a
(query_chunk, gallery_chunk) block of distances exists at once, whatever the gallery size. A running top-k
is merged with each chunk's top-k inside one `lax.scan`.

Results are defined by the squared Euclidean distances of `pairwise_distances(..., "squared")` (direct
differences, the evaluation suite's function), ties going to the lower gallery index, as the suite's 1-NN and
scikit-learn's brute `NearestNeighbors` rank them. XLA may sum the d squares of a distance in a different
order for a different block shape, so distances agree with the suite's to float32 rounding (a few ulp;
identical in the Omniglot test), not always bit for bit.

Direct differences cost 3 vector operations per coordinate and cannot use a matrix multiply, so large
galleries are searched in two exact steps: (1) candidates: each query's k + `extra` nearest rows by the
expansion |q|^2 + |g|^2 - 2 q.g (one matrix multiply per chunk); (2) the candidates re-ranked by their
direct distances. The expansion's rounding error is bounded (`navee_jax.evaluate.expansion`); when a query's
k-th re-ranked distance is not below its worst candidate's expanded distance minus that bound, a row
outside the candidates could still belong to its top k, and that query is searched again by direct
differences over the whole gallery. So the result is always the direct-difference top k.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from navee_jax.evaluate.expansion import expansion_error_bound
from navee_jax.distances import pairwise_distances

QUERY_CHUNK = 256
GALLERY_CHUNK = 4096


_HIGHEST = jax.lax.Precision.HIGHEST


def _merge_scan(distance: Callable[[jax.Array, jax.Array], jax.Array], queries: jax.Array, chunks: jax.Array,
                valid: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(distances (Q, k), gallery indices (Q, k)) of the k smallest `distance(queries, rows)` over the
    chunks (C, G, D); `valid` (C, G) is False on padding rows, which never come before a real row."""
    q, g = queries.shape[0], chunks.shape[1]
    init = (jnp.full((q, k), jnp.inf, jnp.float32), jnp.full((q, k), jnp.iinfo(jnp.int32).max, jnp.int32))

    def merge(carry, chunk):
        best_d, best_i = carry
        rows, ok, start = chunk
        d = jnp.where(ok[None, :], distance(queries, rows), jnp.inf)
        neg, at = jax.lax.top_k(-d, min(k, g))
        # Earlier rows (the running top-k) first: `lax.top_k` puts the lower position first among equal
        # values, so equal distances keep the lower gallery index.
        cand_d = jnp.concatenate([best_d, -neg], axis=1)
        cand_i = jnp.concatenate([best_i, at.astype(jnp.int32) + start], axis=1)
        neg, pick = jax.lax.top_k(-cand_d, k)
        return (-neg, jnp.take_along_axis(cand_i, pick, axis=1)), None

    starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * g
    (best_d, best_i), _ = jax.lax.scan(merge, init, (chunks, valid, starts))
    return best_d, best_i


def _direct(queries: jax.Array, rows: jax.Array) -> jax.Array:
    return pairwise_distances(queries, rows, "squared")


def _expanded(queries: jax.Array, rows: jax.Array) -> jax.Array:
    qn = jnp.sum(jnp.square(queries), axis=1)
    rn = jnp.sum(jnp.square(rows), axis=1)
    return qn[:, None] + rn[None, :] - 2.0 * jnp.matmul(queries, rows.T, precision=_HIGHEST)


_direct_block = jax.jit(partial(_merge_scan, _direct), static_argnames=("k",))
_expanded_block = jax.jit(partial(_merge_scan, _expanded), static_argnames=("k",))


@jax.jit
def _rerank(queries: jax.Array, gallery: jax.Array, idx: jax.Array) -> jax.Array:
    """(Q, c) direct squared distances of each query to its candidate rows `idx` (Q, c)."""
    return jax.vmap(lambda q, rows: _direct(q[None], rows)[0])(queries, gallery[idx])


def _blocks(block_fn, queries: np.ndarray, args: tuple, k: int, query_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """`block_fn(query_block, *args, k=k)` over fixed-size (zero-padded) query blocks, concatenated."""
    dist, idx = [], []
    qc = min(query_chunk, max(len(queries), 1))
    for s in range(0, len(queries), qc):
        block = queries[s:s + qc]
        n = len(block)
        if n < qc:  # one compiled shape for every block
            block = np.concatenate([block, np.zeros((qc - n, block.shape[1]), np.float32)])
        d, i = block_fn(jnp.asarray(block), *args, k=k)
        dist.append(np.asarray(d)[:n])
        idx.append(np.asarray(i)[:n])
    if not dist:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(dist), np.concatenate(idx).astype(np.int64)


class ExactIndex:
    """A gallery laid out for `search`: padded chunks on the device and the largest row norm, built once
    (the gallery copy and its norms cost as much as searching it for a few hundred queries)."""

    def __init__(self, gallery: np.ndarray, gallery_chunk: int = GALLERY_CHUNK):
        gallery = np.asarray(gallery, np.float32)
        if gallery.ndim != 2:
            raise ValueError(f"gallery of shape {gallery.shape}: expected (n, d)")
        self.size, self.dim = gallery.shape
        g = max(1, min(gallery_chunk, self.size))
        n_chunks = -(-self.size // g)
        padded = np.zeros((n_chunks * g, self.dim), np.float32)
        padded[:self.size] = gallery
        self.valid = jnp.asarray((np.arange(n_chunks * g) < self.size).reshape(n_chunks, g))
        self.chunks = jnp.asarray(padded.reshape(n_chunks, g, self.dim))
        self.max_row_sq = float(jnp.max(jnp.sum(jnp.square(self.chunks), axis=2))) if self.size else 0.0

    def search(self, queries: np.ndarray, k: int, query_chunk: int = QUERY_CHUNK,
               extra: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances (Q, k'), gallery indices (Q, k')) of each query's k' = min(k, gallery size)
        nearest rows, nearest first; equal distances in gallery order (see the module docstring)."""
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries of shape {queries.shape}: expected (n, {self.dim})")
        k = min(k, self.size)
        if k < 1:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        args = (self.chunks, self.valid)
        if self.size <= k + extra:  # small galleries: every row is a candidate anyway
            return _blocks(_direct_block, queries, args, k, query_chunk)
        approx, cand = _blocks(_expanded_block, queries, args, k + extra, query_chunk)
        exact = np.asarray(_rerank(jnp.asarray(queries), self.chunks.reshape(-1, self.dim), jnp.asarray(cand)))
        order = np.lexsort((cand, exact), axis=1)[:, :k]  # by (direct distance, gallery index)
        dist, idx = np.take_along_axis(exact, order, axis=1), np.take_along_axis(cand, order, axis=1)
        query_sq = np.sum(np.square(queries.astype(np.float64)), axis=1)
        bound = 2.0 * expansion_error_bound(query_sq, self.max_row_sq, self.dim)  # doubled for safety
        unsure = np.flatnonzero(~(approx[:, -1].astype(np.float64) - bound > dist[:, -1]))
        if len(unsure):
            dist[unsure], idx[unsure] = _blocks(_direct_block, queries[unsure], args, k, query_chunk)
        return dist, idx


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissIndex:
    """Approximate search for very large galleries: a FAISS inverted-file index (IVF-Flat, squared L2) with
    `nlist` k-means cells (default 4 sqrt(n)), of which `nprobe` are searched per query. Optional: needs
    `pip install faiss-cpu` (the `faiss` extra). Its recall against `ExactIndex` is measured by
    bench/recognize.py; ties and near-ties may come back in another order than the exact search's."""

    def __init__(self, gallery: np.ndarray, nlist: int | None = None, nprobe: int = 16, seed: int = 0):
        try:
            import faiss
        except ImportError:
            raise ImportError("the faiss index needs FAISS: pip install faiss-cpu (or navee-jax[faiss])") from None
        gallery = np.ascontiguousarray(gallery, np.float32)
        self.size, self.dim = gallery.shape
        self.nlist = nlist or max(1, min(self.size // 39, int(4 * np.sqrt(self.size))))  # >= 39 points per cell
        quantizer = faiss.IndexFlatL2(self.dim)
        self.index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_L2)
        self.index.cp.seed = seed  # the k-means initialisation: the same index for the same gallery
        self.index.train(gallery)
        self.index.add(gallery)
        self.index.nprobe = min(nprobe, self.nlist)
        self._exact = None
        self._gallery = gallery

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances (Q, k'), gallery indices (Q, k')), k' = min(k, gallery size); a query whose
        probed cells hold fewer than k' rows is answered by the exact search."""
        k = min(k, self.size)
        dist, idx = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        short = np.flatnonzero((idx < 0).any(axis=1))
        if len(short):
            self._exact = self._exact or ExactIndex(self._gallery)
            dist[short], idx[short] = self._exact.search(np.asarray(queries, np.float32)[short], k)
        return dist, idx.astype(np.int64)
