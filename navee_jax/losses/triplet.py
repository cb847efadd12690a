"""Triplet loss with batch-hard mining (Hermans et al. 2017) over a PK batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from navee_jax.losses.distances import pairwise_distances, same_label_mask


def batch_hard_triplet_loss(embeddings: jax.Array, labels: jax.Array, margin: float,
                            squared: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean over anchors of relu(max_p d(a, p) - min_n d(a, n) + margin).

    An anchor with no positive (its label is alone in the batch) or no negative (one label in the
    whole batch) forms no triplet: it is left out of the mean, and `valid_fraction` reports how
    many anchors counted. With no valid anchor at all the loss is 0.
    """
    d = pairwise_distances(embeddings, embeddings, squared)
    same = same_label_mask(labels, labels)
    positive = same & ~jnp.eye(len(labels), dtype=bool)
    negative = ~same
    # Distances are >= 0, so 0 is a neutral fill for the max and the dtype's max for the min.
    hardest_positive = jnp.max(jnp.where(positive, d, 0.0), axis=1)
    hardest_negative = jnp.min(jnp.where(negative, d, jnp.finfo(d.dtype).max), axis=1)
    valid = positive.any(axis=1) & negative.any(axis=1)
    per_anchor = jnp.where(valid, jax.nn.relu(hardest_positive - hardest_negative + margin), 0.0)
    num_valid = valid.sum()
    denom = jnp.maximum(num_valid, 1)
    loss = per_anchor.sum() / denom
    aux = {
        "valid_fraction": num_valid / len(labels),
        "active_fraction": (per_anchor > 0).sum() / denom,
        "hardest_positive": jnp.where(valid, hardest_positive, 0.0).sum() / denom,
        "hardest_negative": jnp.where(valid, hardest_negative, 0.0).sum() / denom,
    }
    return loss, aux
