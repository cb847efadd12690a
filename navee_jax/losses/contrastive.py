"""Contrastive loss (Hadsell, Chopra & LeCun 2005) with the study's online hard-pair mining.

Per pair with Euclidean distance d and y = 1 for a same-class pair:

    L = y * d^2 / 2 + (1 - y) * max(0, margin - d)^2 / 2

Mining keeps the k = ceil(p_mining * #pairs) largest per-pair losses of the batch (at least one when
there is any pair; see `top_fraction_mask`) and averages those; p_mining = 1 is the plain mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.distances import safe_sqrt, masked_mean, pairwise_distances, same_label_mask, top_fraction_mask
from navee_jax.losses.registry import Objective, register_loss


def _pair_terms(d2: jax.Array, same: jax.Array, margin: float) -> jax.Array:
    # Positive pairs use d^2 directly (no sqrt: smooth at d = 0). A duplicated negative pair (d = 0) gets
    # the value margin^2 / 2 but a zero gradient: the direction to push the two points apart is undefined.
    d = safe_sqrt(d2)
    return jnp.where(same, 0.5 * d2, 0.5 * jnp.square(jax.nn.relu(margin - d)))


def _mined_mean(d2: jax.Array, same: jax.Array, valid: jax.Array, margin: float,
                p_mining: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    terms = _pair_terms(d2, same, margin)
    selected, k = top_fraction_mask(terms, valid, p_mining)
    loss = jnp.sum(jnp.where(selected, terms, 0.0)) / jnp.maximum(k, 1)
    d = safe_sqrt(d2)
    num_valid = jnp.sum(valid)
    aux = {
        "num_pairs": num_valid.astype(terms.dtype),
        "positive_fraction": jnp.sum(valid & same) / jnp.maximum(num_valid, 1),
        "active_fraction": jnp.sum(valid & (terms > 0)) / jnp.maximum(num_valid, 1),
        "mined_fraction": k / jnp.maximum(num_valid, 1),
        "positive_distance": masked_mean(d, valid & same),
        "negative_distance": masked_mean(d, valid & ~same),
    }
    return loss, aux


def contrastive_pair_loss(a: jax.Array, b: jax.Array, same: jax.Array, margin: float,
                          p_mining: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Contrastive loss on sampled pairs (a[i], b[i]); a, b: (n, d), same: (n,) bool.

    Returns the mean of the k = ceil(p_mining * n) largest per-pair losses (plain mean for p_mining = 1;
    0 for n = 0). aux: num_pairs, positive_fraction, active_fraction (pairs with a positive loss),
    mined_fraction (k / n), positive_distance / negative_distance (mean Euclidean d over the positive /
    negative pairs; 0 when there is none).
    """
    d2 = jnp.sum(jnp.square(a - b), axis=-1)
    same = jnp.asarray(same, bool)
    return _mined_mean(d2, same, jnp.ones_like(same), margin, p_mining)


def contrastive_batch_loss(embeddings: jax.Array, labels: jax.Array, margin: float,
                           p_mining: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Contrastive loss over all pairs i < j of a batch (embeddings (n, d), labels (n,)).

    Every unordered pair counts once, positive (same label) or negative. Returns the mean of the
    k = ceil(p_mining * n(n-1)/2) largest per-pair losses; a batch of one sample has no pair and loss 0.
    A single-class batch has only positive pairs. aux as `contrastive_pair_loss`.
    """
    n = embeddings.shape[0]
    d2 = pairwise_distances(embeddings, embeddings, "squared")
    same = same_label_mask(labels, labels)
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    return _mined_mean(d2, same, upper, margin, p_mining)


@register_loss("contrastive", samplers=("pairs", "pk"))
def _objective(config: ml_collections.ConfigDict, _train_labels: np.ndarray) -> Objective:
    loss = config.loss
    if config.sampler.kind == "pairs":
        return Objective(lambda emb, batch, _: contrastive_pair_loss(emb[:, 0], emb[:, 1], batch["same"], loss.margin,
                                                                     loss.p_mining))
    return Objective(lambda emb, batch, _: contrastive_batch_loss(emb, batch["labels"], loss.margin, loss.p_mining))
