"""Triplet losses relu(d(a, p) - d(a, n) + margin) with online miners over a labelled batch.

A triplet (a, p, n) of batch indices is valid when label(p) == label(a), p != a and label(n) != label(a).
Every miner selects a set of valid triplets and the loss is the mean of relu(d_ap - d_an + margin) over
the selected triplets (0, with a zero gradient, when none is selected):

* "batch_all": all valid triplets whose loss is positive ("active"; a NaN loss counts as active so
  that it shows up). The mean is over active triplets only, not over all valid ones.
* "batch_hard" (Hermans et al. 2017): per anchor, its farthest positive and its nearest negative.
  Anchors without a positive or a negative select nothing. Ties go to the lowest index.
* "semi_hard" (Schroff et al. 2015): per positive pair (a, p), the nearest negative that is farther than
  the positive, d(a, n) > d(a, p) (strictly); if no negative is farther, the farthest negative. Pairs
  whose anchor has no negative select nothing. Ties go to the lowest index.
* "top_fraction" (the study): of all valid triplets, the k = ceil(top_fraction * #valid) with the
  largest loss (ranked by the unclipped d_ap - d_an, so zero-loss triplets closest to the margin come
  first; see `top_fraction_mask`). top_fraction = 1 is the mean over all valid triplets, zeros included.

`mine_triplets` returns the selected (a, p, n) as an (n, n, n) mask for inspection. Memory: "batch_all",
"top_fraction" and "semi_hard" hold (n, n, n) arrays (n = 256: 16.8M entries); "batch_hard" stays O(n^2),
its loss using the mined indices directly.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.distances import (
    Metric,
    masked_mean,
    negative_mask,
    paired_distances,
    pairwise_distances,
    positive_mask,
    top_fraction_mask,
)
from navee_jax.losses.registry import Objective, register_loss

Miner = Literal["batch_all", "batch_hard", "semi_hard", "top_fraction"]
MINERS: tuple[str, ...] = ("batch_all", "batch_hard", "semi_hard", "top_fraction")


def _check_miner(miner: str) -> None:
    if miner not in MINERS:
        raise ValueError(f"unknown triplet miner {miner!r}; available: {', '.join(MINERS)}")


def _batch_hard_indices(d: jax.Array, pos: jax.Array, neg: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per anchor: (farthest positive index, nearest negative index, anchor has both) each (n,)."""
    # argmax/argmin return a NaN's index, so a NaN distance is picked and reaches the loss.
    p_idx = jnp.argmax(jnp.where(pos, d, -jnp.inf), axis=1)
    n_idx = jnp.argmin(jnp.where(neg, d, jnp.inf), axis=1)
    return p_idx, n_idx, pos.any(axis=1) & neg.any(axis=1)


def _semi_hard_indices(d: jax.Array, pos: jax.Array, neg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per positive pair (a, p): (negative index (n, n), pair is valid (n, n))."""
    # farther[a, p, n]: n is a negative of a with d(a, n) > d(a, p).
    farther = neg[:, None, :] & (d[:, None, :] > d[:, :, None])
    nearest_farther = jnp.argmin(jnp.where(farther, d[:, None, :], jnp.inf), axis=2)
    farthest = jnp.argmax(jnp.where(neg, d, -jnp.inf), axis=1)
    n_idx = jnp.where(farther.any(axis=2), nearest_farther, farthest[:, None])
    return n_idx, pos & neg.any(axis=1)[:, None]


def _one_hot_mask(idx: jax.Array, n: int) -> jax.Array:
    return idx[..., None] == jnp.arange(n)


def mine_triplets(d: jax.Array, labels: jax.Array, miner: Miner, margin: float = 0.0,
                  top_fraction: float = 1.0) -> jax.Array:
    """(n, n, n) boolean mask of the triplets [a, p, n] that `miner` selects from distances d (n, n).

    margin matters only to "batch_all" (which triplets are active); top_fraction only to "top_fraction".
    See the module docstring for each miner's rule and its edge cases.
    """
    _check_miner(miner)
    n = labels.shape[0]
    pos, neg = positive_mask(labels), negative_mask(labels)
    if miner == "batch_hard":
        p_idx, n_idx, valid = _batch_hard_indices(d, pos, neg)
        return valid[:, None, None] & _one_hot_mask(p_idx, n)[:, :, None] & _one_hot_mask(n_idx, n)[:, None, :]
    if miner == "semi_hard":
        n_idx, valid = _semi_hard_indices(d, pos, neg)
        return valid[:, :, None] & _one_hot_mask(n_idx, n)
    valid = pos[:, :, None] & neg[:, None, :]
    scores = d[:, :, None] - d[:, None, :] + margin
    if miner == "batch_all":
        return valid & ~(scores <= 0)
    return top_fraction_mask(scores, valid, top_fraction)[0]


def triplet_loss(embeddings: jax.Array, labels: jax.Array, margin: float, miner: Miner,
                 metric: Metric = "euclidean", top_fraction: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean of relu(d(a, p) - d(a, n) + margin) over the triplets `miner` selects (module docstring).

    embeddings (n, d), labels (n,); metric as `pairwise_distances`. With no selected triplet (e.g. a
    single-class batch, or every class a singleton) the loss is 0.
    aux:
      valid_fraction: fraction of anchors with at least one positive and one negative.
      num_triplets: number of selected triplets.
      active_fraction: fraction of the miner's candidates with a positive loss; the candidates are all
        valid triplets for "batch_all" and "top_fraction", and the selected triplets for "batch_hard"
        and "semi_hard".
      positive_distance / negative_distance: mean d(a, p) / d(a, n) over the selected triplets.
    """
    _check_miner(miner)
    d = pairwise_distances(embeddings, embeddings, metric)
    pos, neg = positive_mask(labels), negative_mask(labels)
    valid_anchor = pos.any(axis=1) & neg.any(axis=1)
    if miner in ("batch_hard", "semi_hard"):
        if miner == "batch_hard":
            p_idx, n_idx, selected = _batch_hard_indices(d, pos, neg)
            d_ap = jnp.take_along_axis(d, p_idx[:, None], axis=1)[:, 0]
            d_an = jnp.take_along_axis(d, n_idx[:, None], axis=1)[:, 0]
        else:
            n_idx, selected = _semi_hard_indices(d, pos, neg)
            d_ap, d_an = d, jnp.take_along_axis(d, n_idx, axis=1)
        terms = jax.nn.relu(d_ap - d_an + margin)
        active = jnp.sum(selected & (terms > 0)) / jnp.maximum(jnp.sum(selected), 1)
    else:
        candidates = pos[:, :, None] & neg[:, None, :]
        selected = mine_triplets(d, labels, miner, margin, top_fraction)
        d_ap, d_an = d[:, :, None], d[:, None, :]
        terms = jax.nn.relu(d_ap - d_an + margin)
        active = jnp.sum(candidates & (terms > 0)) / jnp.maximum(jnp.sum(candidates), 1)
        d_ap, d_an = jnp.broadcast_to(d_ap, terms.shape), jnp.broadcast_to(d_an, terms.shape)
    aux = {
        "valid_fraction": jnp.mean(valid_anchor.astype(d.dtype)),
        "num_triplets": jnp.sum(selected).astype(d.dtype),
        "active_fraction": active.astype(d.dtype),
        "positive_distance": masked_mean(d_ap, selected),
        "negative_distance": masked_mean(d_an, selected),
    }
    return masked_mean(terms, selected), aux


def sampled_triplet_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float,
                         metric: Metric = "euclidean") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean of relu(d(anchor[i], positive[i]) - d(anchor[i], negative[i]) + margin) over rows i.

    For triplets drawn by the data layer ("random triplets"); anchor, positive, negative: (n, d) each.
    aux: active_fraction, positive_distance, negative_distance (means over the n triplets).
    """
    d_ap = paired_distances(anchor, positive, metric)
    d_an = paired_distances(anchor, negative, metric)
    terms = jax.nn.relu(d_ap - d_an + margin)
    aux = {
        "active_fraction": jnp.mean((terms > 0).astype(terms.dtype)),
        "positive_distance": jnp.mean(d_ap),
        "negative_distance": jnp.mean(d_an),
    }
    return jnp.mean(terms), aux


@register_loss("triplet", samplers=("pk", "triplets"))
def _objective(config: ml_collections.ConfigDict, _train_labels: np.ndarray) -> Objective:
    loss = config.loss
    if config.sampler.kind == "triplets":
        return Objective(lambda emb, batch, _: sampled_triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], loss.margin,
                                                                    loss.metric))
    return Objective(lambda emb, batch, _: triplet_loss(emb, batch["labels"], loss.margin, loss.miner, loss.metric,
                                                        loss.top_fraction))
