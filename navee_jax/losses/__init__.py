"""Metric-learning losses built on shared pairwise distances and label masks.

Every loss is a pure jnp function returning (loss, aux), aux a dict of scalar diagnostics; each module also
registers the objective `loss.name` trains (navee_jax.losses.registry). Importing the package registers them all.
"""

from navee_jax.distances import (
    METRICS,
    cosine_similarity,
    l2_normalize,
    masked_mean,
    negative_mask,
    paired_distances,
    pairwise_distances,
    positive_mask,
    same_label_mask,
    top_fraction_mask,
    triplet_mask,
)
from navee_jax.losses.contrastive import contrastive_batch_loss, contrastive_pair_loss
from navee_jax.losses.multi_similarity import multi_similarity_loss, multi_similarity_mining
from navee_jax.losses.protonet import batched_prototypical_loss, prototypical_loss
from navee_jax.losses.proxy_anchor import init_proxies, proxy_anchor_loss
from navee_jax.losses.registry import LOSSES, Objective, loss_entry, make_objective, register_loss
from navee_jax.losses.triplet import (
    MINERS,
    mine_triplets,
    sampled_triplet_loss,
    triplet_loss,
)
from navee_jax.losses.verification import verification_distance, verification_loss, verification_scores

__all__ = [
    "LOSSES",
    "Objective",
    "loss_entry",
    "make_objective",
    "register_loss",
    "METRICS",
    "MINERS",
    "batched_prototypical_loss",
    "contrastive_batch_loss",
    "contrastive_pair_loss",
    "cosine_similarity",
    "init_proxies",
    "l2_normalize",
    "masked_mean",
    "mine_triplets",
    "multi_similarity_loss",
    "multi_similarity_mining",
    "negative_mask",
    "paired_distances",
    "pairwise_distances",
    "positive_mask",
    "prototypical_loss",
    "proxy_anchor_loss",
    "same_label_mask",
    "sampled_triplet_loss",
    "top_fraction_mask",
    "triplet_loss",
    "triplet_mask",
    "verification_distance",
    "verification_loss",
    "verification_scores",
]
