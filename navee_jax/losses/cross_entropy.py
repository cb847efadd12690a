"""Softmax cross-entropy on class logits, the supervised classifier's loss (navee_jax.classify)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy of (B, C) `logits` against integer `labels` (B,), the targets smoothed towards
    uniform by `label_smoothing` (Szegedy et al. 2016: (1 - s) one-hot + s / C)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def classification_loss(label_smoothing: float):
    """A `LossOnBatch` (navee_jax.losses.registry) for {"labels": (B,)} batches whose embeddings are logits;
    its aux is the batch's accuracy."""

    def loss(logits: jax.Array, batch: dict[str, jax.Array], _params: dict) -> tuple[jax.Array, dict]:
        labels = batch["labels"]
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return softmax_cross_entropy(logits, labels, label_smoothing), {"accuracy": accuracy}

    return loss
