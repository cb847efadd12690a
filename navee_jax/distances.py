"""Pairwise distances, similarities and label masks: the shared core of every metric-learning loss.

Everything here is a pure jnp function of fixed-shape arrays (jit- and shard-friendly). Conventions that
all losses rely on:

* Euclidean distance has a finite (zero) gradient at distance 0, so duplicated embeddings never produce
  NaN gradients; a NaN embedding still yields NaN distances rather than being read as distance 0.
* Cosine quantities L2-normalise with `l2_normalize`, which maps a zero vector to the zero vector
  (cosine similarity 0, cosine distance 1 to everything) instead of dividing by zero.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Metric = Literal["euclidean", "squared", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "squared", "cosine")

# Full float32 products on every backend: TPU/GPU default matmul precision would cost ~3 digits.
_HIGHEST = jax.lax.Precision.HIGHEST


def safe_sqrt(d2: jax.Array) -> jax.Array:
    # d/dx sqrt(x) is infinite at 0; coincident embeddings would turn gradients into NaN.
    # The double where gives sqrt's value everywhere and a zero gradient at exactly 0; the
    # `0 * d2` branch lets a NaN distance stay NaN instead of being silently read as 0.
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0 * d2)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(|x|, eps) along `axis`.

    A zero vector maps to the zero vector with a finite gradient (x / eps: large, but finite, since the
    direction of a zero vector is undefined); NaN entries propagate.
    """
    norm = safe_sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; available: {', '.join(METRICS)}")


def cosine_similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """(n, m) cosine similarities between rows of x (n, d) and y (m, d); 0 against a zero vector."""
    xn, yn = l2_normalize(x), l2_normalize(y)
    return jax.vmap(lambda xi: jnp.dot(yn, xi, precision=_HIGHEST))(xn)


def pairwise_distances(x: jax.Array, y: jax.Array, metric: Metric = "euclidean") -> jax.Array:
    """(n, m) distances between rows of x (n, d) and y (m, d).

    metric: "euclidean" |x - y|, "squared" |x - y|^2, or "cosine" 1 - cos(x, y) in [0, 2] (a zero vector
    is at distance 1 from everything).

    Differences are squared directly (vmapped over rows of x) rather than expanded as
    |x|^2 + |y|^2 - 2xy, which cancels catastrophically for close points and can go negative.
    """
    _check_metric(metric)
    if metric == "cosine":
        return 1.0 - cosine_similarity(x, y)
    d2 = jax.vmap(lambda xi: jnp.sum(jnp.square(xi - y), axis=-1))(x)
    return d2 if metric == "squared" else safe_sqrt(d2)


def paired_distances(x: jax.Array, y: jax.Array, metric: Metric = "euclidean") -> jax.Array:
    """(n,) distances between matching rows x[i], y[i] of two (n, d) arrays; metrics as pairwise_distances."""
    _check_metric(metric)
    if metric == "cosine":
        return 1.0 - jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
    d2 = jnp.sum(jnp.square(x - y), axis=-1)
    return d2 if metric == "squared" else safe_sqrt(d2)


def same_label_mask(labels_x: jax.Array, labels_y: jax.Array) -> jax.Array:
    """(n, m) boolean: labels_x[i] == labels_y[j]."""
    return labels_x[:, None] == labels_y[None, :]


def positive_mask(labels: jax.Array) -> jax.Array:
    """(n, n) boolean: i != j and labels[i] == labels[j] (a sample is not its own positive)."""
    return same_label_mask(labels, labels) & ~jnp.eye(labels.shape[0], dtype=bool)


def negative_mask(labels: jax.Array) -> jax.Array:
    """(n, n) boolean: labels[i] != labels[j]."""
    return ~same_label_mask(labels, labels)


def triplet_mask(labels: jax.Array) -> jax.Array:
    """(n, n, n) boolean, [a, p, n]: p is a positive of a (a != p) and n a negative of a."""
    return positive_mask(labels)[:, :, None] & negative_mask(labels)[:, None, :]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values where mask is true; 0 (with a zero gradient) when the mask is empty."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def top_fraction_mask(scores: jax.Array, valid: jax.Array, fraction: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Selects the k largest scores among the valid entries: k = ceil(fraction * #valid), at least 1.

    Returns (selected, k): a boolean mask of scores' shape and the int32 count k (0 when nothing is
    valid). Static shapes: ranks come from one sort of the flattened scores with the flat index as
    tie-breaker (no data-dependent top_k), and the ranking carries no gradient. A NaN score ranks first,
    so a NaN anywhere among the valid entries reaches the loss. `fraction * #valid` is shrunk by a relative
    1e-6 before the ceiling, so that products that are integers up to float rounding (0.3 * 10) give that
    integer (k is computed in float32: exact up to 2^24 valid entries). fraction is in (0, 1]; 1 selects
    every valid entry; a Python float outside raises ValueError (a traced one is not checked).
    """
    if isinstance(fraction, (int, float)) and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat_scores = jax.lax.stop_gradient(scores).reshape(-1)
    flat_valid = valid.reshape(-1)
    # Lexicographic ascending sort: valid entries first; among them NaN first, then the largest scores;
    # the index operand makes ties (and the argsort) deterministic.
    key = jnp.where(jnp.isnan(flat_scores), -jnp.inf, -flat_scores)
    index = jnp.arange(flat_scores.shape[0], dtype=jnp.int32)
    *_, order = jax.lax.sort(((~flat_valid).astype(jnp.int32), key, index), num_keys=3)
    ranks = jnp.zeros_like(index).at[order].set(index)
    num_valid = jnp.sum(flat_valid, dtype=jnp.int32)
    wanted = jnp.ceil(jnp.asarray(fraction, jnp.float32) * num_valid.astype(jnp.float32) * (1.0 - 1e-6))
    k = jnp.clip(wanted.astype(jnp.int32), jnp.minimum(num_valid, 1), num_valid)
    selected = flat_valid & (ranks < k)
    return selected.reshape(scores.shape), k


def log1p_sum_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Row-wise log(1 + sum_{mask} exp(x)), stably: a logsumexp that includes a zero term."""
    masked = jnp.where(mask, x, -jnp.inf)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros_like(x[:, :1]), masked], axis=1), axis=1)
