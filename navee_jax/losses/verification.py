"""Koch, Zemel & Salakhutdinov (2015)'s verification objective for siamese networks.

Both images of a pair go through the same network (the twin: embeddings h1, h2); the head scores the pair
p(same class) = sigmoid(alpha . |h1 - h2| + b), a learned weighted L1 distance, and the loss is the binary
cross-entropy of p against the pair's label (`sampler.kind='pairs'`). alpha and b are this loss's
parameters, initialised as the paper's (alpha ~ N(0, 0.2), b ~ N(0.5, 0.01)), and train with the network.

A one-shot decision picks the support image with the highest verification score. So the evaluators and the
recognizer rank by the head, not by a Euclidean distance: `verification_distance` turns the score into a
non-negative distance with the same order, -log p(same) = softplus(-score).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from navee_jax.distances import masked_mean
from navee_jax.losses.registry import Distance, Objective, register_loss

# Floats of |q - g| held at once while scoring a block of queries against a gallery (256 MB in float32).
_BLOCK_FLOATS = 1 << 26


def init_verification_head(key: jax.Array, dim: int) -> dict[str, jax.Array]:
    """{"alpha": (dim,), "bias": ()} drawn as in the paper (section 3.2)."""
    ka, kb = jax.random.split(key)
    return {"alpha": 0.2 * jax.random.normal(ka, (dim,)), "bias": 0.5 + 0.01 * jax.random.normal(kb, ())}


def verification_scores(a: jax.Array, b: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
    """(n,) pre-sigmoid scores alpha . |a[i] - b[i]| + bias of the pairs (a[i], b[i]); a, b: (n, d), or one
    row against many (broadcast)."""
    return jnp.abs(a - b) @ head["alpha"] + head["bias"]


def verification_loss(a: jax.Array, b: jax.Array, same: jax.Array,
                      head: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean binary cross-entropy of sigmoid(score) against `same` (n,) for the pairs (a[i], b[i]).

    aux: accuracy (score > 0 == same), positive_probability / negative_probability (mean p(same) over the
    same-class / different-class pairs; 0 when there is none)."""
    scores = verification_scores(a, b, head)
    same = jnp.asarray(same, bool)
    loss = optax.sigmoid_binary_cross_entropy(scores, same.astype(scores.dtype)).mean()
    p = jax.nn.sigmoid(scores)
    aux = {"accuracy": jnp.mean(((scores > 0) == same).astype(scores.dtype)),
           "positive_probability": masked_mean(p, same), "negative_probability": masked_mean(p, ~same)}
    return loss, aux


@jax.jit
def _distances(queries: jax.Array, gallery: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
    if queries.shape[0] == 0:
        return jnp.zeros((0, gallery.shape[0]), queries.dtype)
    rows = max(1, min(queries.shape[0], _BLOCK_FLOATS // max(gallery.size, 1)))
    scores = jax.lax.map(lambda q: verification_scores(q, gallery, head), queries, batch_size=rows)
    return jax.nn.softplus(-scores)


def verification_distance(head: dict[str, jax.Array]) -> Distance:
    """(queries (n, d), gallery (m, d)) -> (n, m) -log p(same) = softplus(-score) of every pair: >= 0, lower
    for more alike pairs, in the order of the verification score. One compiled function for every head (the
    head is an argument); queries are scored a block at a time, so that at most about `_BLOCK_FLOATS`
    differences exist at once."""
    return lambda queries, gallery: _distances(queries, gallery, head)


@register_loss("verification", samplers=("pairs",), distance=verification_distance)
def _objective(config: ml_collections.ConfigDict, _train_labels: np.ndarray) -> Objective:
    return Objective(lambda emb, batch, head: verification_loss(emb[:, 0], emb[:, 1], batch["same"], head),
                     init_params=init_verification_head)
