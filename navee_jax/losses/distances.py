"""Pairwise Euclidean distances and same-label masks: the shared core of every mining loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _safe_sqrt(d2: jax.Array) -> jax.Array:
    # d/dx sqrt(x) is infinite at 0; coincident embeddings would turn gradients into NaN.
    # The double where gives sqrt's value everywhere and a zero gradient at exactly 0; the
    # `0 * d2` branch lets a NaN distance stay NaN instead of being silently read as 0.
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0 * d2)


def pairwise_distances(x: jax.Array, y: jax.Array, squared: bool = False) -> jax.Array:
    """(n, m) Euclidean distances between rows of x (n, d) and y (m, d).

    Differences are squared directly (vmapped over rows of x) rather than expanded as
    |x|^2 + |y|^2 - 2xy, which cancels catastrophically for close points and can go negative.
    """
    d2 = jax.vmap(lambda xi: jnp.sum(jnp.square(xi - y), axis=-1))(x)
    return d2 if squared else _safe_sqrt(d2)


def same_label_mask(labels_x: jax.Array, labels_y: jax.Array) -> jax.Array:
    """(n, m) boolean: labels_x[i] == labels_y[j]."""
    return labels_x[:, None] == labels_y[None, :]
