"""Multi-similarity loss with its pair mining (Wang et al. 2019).

On cosine similarities S of the L2-normalised embeddings, for each anchor a:

  mining (epsilon): a negative pair (a, n) is kept if S_an > min_p S_ap - epsilon,
                    a positive pair (a, p) is kept if S_ap < max_n S_an + epsilon;
  loss_a = 1/alpha * log(1 + sum_{kept p} exp(-alpha (S_ap - base)))
         + 1/beta  * log(1 + sum_{kept n} exp( beta (S_an - base))).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.distances import cosine_similarity, log1p_sum_exp, masked_mean, negative_mask, positive_mask
from navee_jax.losses.registry import Objective, register_loss


def multi_similarity_mining(s: jax.Array, labels: jax.Array, epsilon: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """(keep_pos, keep_neg): (n, n) masks of the pairs the MS miner keeps, from similarities s (n, n).

    keep_neg[a, n]: n is a negative of a and s[a, n] > min_p s[a, p] - epsilon;
    keep_pos[a, p]: p is a positive of a and s[a, p] < max_n s[a, n] + epsilon.
    Only anchors with both a positive and a negative keep anything. A pair is dropped only when the
    comparison shows it to be easy, so a NaN similarity (or NaN threshold) keeps its pairs. The selection
    carries no gradient.
    """
    s = jax.lax.stop_gradient(s)
    pos, neg = positive_mask(labels), negative_mask(labels)
    valid = (pos.any(axis=1) & neg.any(axis=1))[:, None]
    min_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=1, keepdims=True)
    max_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1, keepdims=True)
    keep_pos = pos & valid & ~(s >= max_neg + epsilon)
    keep_neg = neg & valid & ~(s <= min_pos - epsilon)
    return keep_pos, keep_neg


def multi_similarity_loss(embeddings: jax.Array, labels: jax.Array, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Multi-similarity loss, mean over valid anchors (module docstring for the formula).

    embeddings (n, d) (normalised here; a zero vector has similarity 0 to everything), labels (n,).
    Defaults: alpha = 2, beta = 50, epsilon = 0.1; base (lambda) = 0.5, the value the study uses for CUB-200
    and the one in the authors' released code (the paper's text gives lambda = 1: pass base=1.0).

    Edge cases: an anchor is valid if it has at least one positive (same label, another sample) and one
    negative in the batch; invalid anchors contribute 0 and are left out of the mean (loss 0 when none is
    valid, e.g. a single-class batch or all singletons). A valid anchor whose pairs are all mined away
    stays in the mean with log(1 + 0) = 0 for the emptied term (the authors' code instead skips an anchor
    with an empty kept set and divides by the batch size). A NaN similarity keeps its pair (see
    `multi_similarity_mining`) and so reaches the loss.
    aux: valid_fraction (valid anchors / n), kept_positive_fraction / kept_negative_fraction (kept pairs over
    all positive / negative pairs of valid anchors), positive_similarity / negative_similarity (mean S over
    all positive / negative pairs).
    """
    s = cosine_similarity(embeddings, embeddings)
    pos, neg = positive_mask(labels), negative_mask(labels)
    valid = pos.any(axis=1) & neg.any(axis=1)
    keep_pos, keep_neg = multi_similarity_mining(s, labels, epsilon)
    pos_term = log1p_sum_exp(-alpha * (s - base), keep_pos) / alpha
    neg_term = log1p_sum_exp(beta * (s - base), keep_neg) / beta
    aux = {
        "valid_fraction": jnp.mean(valid.astype(s.dtype)),
        "kept_positive_fraction": jnp.sum(keep_pos) / jnp.maximum(jnp.sum(pos & valid[:, None]), 1),
        "kept_negative_fraction": jnp.sum(keep_neg) / jnp.maximum(jnp.sum(neg & valid[:, None]), 1),
        "positive_similarity": masked_mean(s, pos),
        "negative_similarity": masked_mean(s, neg),
    }
    return masked_mean(pos_term + neg_term, valid), aux


@register_loss("multi_similarity", samplers=("pk",))
def _objective(config: ml_collections.ConfigDict, _train_labels: np.ndarray) -> Objective:
    loss = config.loss
    return Objective(lambda emb, batch, _: multi_similarity_loss(emb, batch["labels"], loss.alpha, loss.beta,
                                                                 loss.base, loss.epsilon))
