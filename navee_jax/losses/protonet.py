"""Prototypical networks loss (Snell et al. 2017) on few-shot episodes.

Prototypes are the per-class means of the support embeddings; a query's logits are the negative
distances to the prototypes, trained with softmax cross-entropy. Labels are episode-local, 0..C-1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.distances import Metric, masked_mean, pairwise_distances
from navee_jax.losses.registry import Objective, register_loss


def prototypical_loss(support: jax.Array, support_labels: jax.Array, query: jax.Array, query_labels: jax.Array,
                      num_classes: int, metric: Metric = "squared") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of softmax(-distance(query, prototypes)) against query_labels.

    support (S, d), support_labels (S,), query (Q, d), query_labels (Q,); num_classes (C) is static.
    Edge cases: a support sample with a label outside 0..C-1 is ignored (usable as padding); a class
    with no support sample has no prototype (its logit is the dtype's lowest value, so no query is
    assigned to it unless no class has one); a query whose label is outside 0..C-1 or has no prototype
    is left out of the mean and of the accuracy. With no valid query the loss is 0. A single-class
    episode has loss 0 and accuracy 1.
    aux: accuracy (argmax over prototypes == label, over valid queries; ties go to the lower class),
    valid_fraction (valid queries / Q), prototype_fraction (classes with a prototype / C).
    """
    # Per-class sums by segment_sum (out-of-range labels are dropped), not a one-hot matrix product: with
    # 20 or more ways, jaxlib 0.10.2's XLA:CPU fuses that product's gradient into a YNNPACK reduction that
    # segfaults (jax-ml/jax#39257; docs/omniglot.md). segment_sum is exact in float32 as well.
    counts = jax.ops.segment_sum(jnp.ones_like(support_labels, support.dtype), support_labels, num_classes)
    sums = jax.ops.segment_sum(support, support_labels, num_classes)
    prototypes = sums / jnp.maximum(counts, 1.0)[:, None]
    has_prototype = counts > 0
    distances = pairwise_distances(query, prototypes, metric)
    # The dtype's lowest value rather than -inf: with no prototype at all, -inf would make log_softmax NaN
    # (and its gradient NaN even where masked out); a finite floor gives exp(...) = 0 all the same.
    logits = jnp.where(has_prototype[None, :], -distances, jnp.finfo(distances.dtype).min)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    in_range = (query_labels >= 0) & (query_labels < num_classes)
    label = jnp.where(in_range, query_labels, 0)
    valid = in_range & has_prototype[label]
    nll = -jnp.take_along_axis(log_probs, label[:, None], axis=1)[:, 0]
    correct = jnp.argmax(logits, axis=-1) == label
    aux = {
        "accuracy": masked_mean(correct.astype(log_probs.dtype), valid),
        "valid_fraction": jnp.mean(valid.astype(log_probs.dtype)),
        "prototype_fraction": jnp.mean(has_prototype.astype(log_probs.dtype)),
    }
    return masked_mean(nll, valid), aux


def batched_prototypical_loss(support: jax.Array, support_labels: jax.Array, query: jax.Array,
                              query_labels: jax.Array, num_classes: int,
                              metric: Metric = "squared") -> tuple[jax.Array, dict[str, jax.Array]]:
    """`prototypical_loss` vmapped over a leading episode axis E, averaged over episodes.

    support (E, S, d), support_labels (E, S), query (E, Q, d), query_labels (E, Q). The loss and every
    aux entry are the unweighted means of the per-episode values (each episode counts equally, whatever
    its number of valid queries).
    """
    losses, aux = jax.vmap(lambda s, sl, q, ql: prototypical_loss(s, sl, q, ql, num_classes, metric))(
        support, support_labels, query, query_labels)
    return jnp.mean(losses), jax.tree.map(jnp.mean, aux)


@register_loss("protonet", samplers=("episodes",))
def _objective(config: ml_collections.ConfigDict, _train_labels: np.ndarray) -> Objective:
    s, metric = config.sampler, config.loss.metric
    n_support = s.ways * s.shots  # an episode's images are its support images, then its queries

    def on_episode(emb, batch, _):
        return prototypical_loss(emb[:n_support], batch["support_labels"], emb[n_support:], batch["query_labels"],
                                 s.ways, metric)
    return Objective(on_episode)
