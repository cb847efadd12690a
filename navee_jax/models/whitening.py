"""Whitening of the embedding, fitted on training images after training rather than trained (`model.whiten`).

PCA whitening with a power (Jegou & Chum, ECCV 2012, "Negative evidences and co-occurrences in image retrieval:
the benefit of PCA and whitening"): centre on the training embeddings' mean, rotate onto their principal axes
and divide axis i by sigma_i ** power (power 1: full whitening, 0: centring only), then L2-normalise again. The
few directions a metric loss spreads the training classes along dominate the distances of a unit-vector
embedding; unseen classes differ along the others too, and whitening gives those back their weight
(docs/omniglot.md measures it).

Like BatchNorm's running statistics, the fitted mean and projection are model state, not parameters: the train
step never changes them, and in training mode the module is the identity, so the loss sees the embedding it
always did. `Whitening.use_fitted` is True for evaluation and recognition; `init_train_state` sets it False in
the graph the train step runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from navee_jax.distances import l2_normalize


class WhiteningStat(nnx.Variable):
    """A fitted (not trained) statistic of the whitening."""


class Whitening(nnx.Module):
    def __init__(self, dim: int, renormalize: bool):
        self.mean = WhiteningStat(jnp.zeros((dim,), jnp.float32))
        self.projection = WhiteningStat(jnp.eye(dim, dtype=jnp.float32))  # identity until fitted
        self.renormalize = renormalize
        self.use_fitted = True

    def __call__(self, z: jax.Array) -> jax.Array:
        if not self.use_fitted:
            return z
        w = (z - self.mean[...]) @ self.projection[...]
        return l2_normalize(w) if self.renormalize else w


def fit_whitening(features: np.ndarray, power: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), projection (d, d)) of PCA whitening with `power` fitted on (n, d) `features`, in float64.

    Axis i of the projection is the i-th principal direction over sigma_i ** power, sigma_i the singular value
    of the centred features divided by sqrt(n) (their standard deviation along it). Directions with almost no
    variance (sigma below 1e-6 of the largest) are dropped (a zero column) rather than blown up.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"whitening needs finite (n >= 2, d) features; got shape {x.shape}")
    mean = x.mean(axis=0)
    _, sigma, vt = np.linalg.svd(x - mean, full_matrices=False)
    sigma = sigma / np.sqrt(len(x))
    keep = sigma > 1e-6 * sigma[0]
    scale = np.where(keep, np.maximum(sigma, 1e-300) ** -power, 0.0)
    projection = np.zeros((x.shape[1], x.shape[1]))
    projection[:, :len(sigma)] = vt.T * scale
    return mean.astype(np.float32), projection.astype(np.float32)


def with_whitening(model_state: nnx.State, mean: Any, projection: Any) -> nnx.State:
    """A copy of a model's non-parameter state with its whitening's statistics replaced."""
    state = jax.tree.map(lambda x: x, model_state)
    whitening = state["whitening"]
    whitening["mean"] = whitening["mean"].replace(jnp.asarray(mean, jnp.float32))
    whitening["projection"] = whitening["projection"].replace(jnp.asarray(projection, jnp.float32))
    return state
