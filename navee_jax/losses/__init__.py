"""Metric-learning losses built on shared pairwise distances and label masks."""

from navee_jax.losses.distances import pairwise_distances, same_label_mask
from navee_jax.losses.triplet import batch_hard_triplet_loss

__all__ = ["pairwise_distances", "same_label_mask", "batch_hard_triplet_loss"]
