"""Proxy-anchor loss (Kim et al. 2020) with the proxies passed in as (learned) parameters.

With s(x, p) the cosine similarity of embedding x and proxy p (both L2-normalised), P+ the proxies of
classes present in the batch, X_p+ the batch samples of p's class and X_p- the others:

  loss = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
       + 1/C    sum_{p}       log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.distances import cosine_similarity, log1p_sum_exp, masked_mean
from navee_jax.losses.registry import Objective, register_loss


def init_proxies(key: jax.Array, num_classes: int, dim: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(num_classes, dim) proxies ~ N(0, 2 / num_classes): Kaiming (He) normal with the fan taken over classes.

    This is the paper's Kaiming-normal choice applied to a (C, d) weight in "fan_out" mode (fan = C). The
    loss normalises proxies, so the scale only sets how far a gradient step turns a proxy (a step of
    a given size moves a short proxy's direction more): scale it with the proxies' learning rate in mind.
    """
    return jax.random.normal(key, (num_classes, dim), dtype) * (2.0 / num_classes) ** 0.5


def proxy_anchor_loss(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, alpha: float = 32.0,
                      delta: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Proxy-anchor loss of embeddings (n, d) with labels (n,) in 0..C-1 against proxies (C, d).

    Edge cases: with no proxy in P+ (empty batch) the positive term is 0; the negative term always
    averages over all C proxies, and a proxy with no negative in the batch (a single-class batch)
    contributes log(1 + 0) = 0 to it. A label outside 0..C-1 matches no proxy, so that sample is a
    negative of every proxy. A zero embedding or proxy has similarity 0 to everything.
    aux: positive_proxy_fraction (|P+| / C), positive_similarity / negative_similarity (mean s(x, p)
    over the positive / negative (sample, proxy) pairs).
    """
    num_classes = proxies.shape[0]
    s = cosine_similarity(proxies, embeddings)  # (C, n): one row per proxy
    pos = labels[None, :] == jnp.arange(num_classes)[:, None]
    neg = ~pos
    has_positive = pos.any(axis=1)
    pos_term = log1p_sum_exp(-alpha * (s - delta), pos)
    neg_term = log1p_sum_exp(alpha * (s + delta), neg)
    loss = masked_mean(pos_term, has_positive) + jnp.mean(neg_term)
    aux = {
        "positive_proxy_fraction": jnp.mean(has_positive.astype(s.dtype)),
        "positive_similarity": masked_mean(s, pos),
        "negative_similarity": masked_mean(s, neg),
    }
    return loss, aux


@register_loss("proxy_anchor", samplers=("pk",))
def _objective(config: ml_collections.ConfigDict, train_labels: np.ndarray) -> Objective:
    """One proxy per training class, indexed by a catalogue-label -> row table."""
    loss = config.loss
    classes = np.unique(train_labels)
    row = np.full(int(train_labels.max()) + 1, -1, np.int32)
    row[classes] = np.arange(len(classes))
    row_of = jnp.asarray(row)

    def on_pk(emb, batch, params):
        return proxy_anchor_loss(emb, row_of[batch["labels"]], params["proxies"], loss.alpha, loss.delta)
    return Objective(on_pk, lambda key, dim: {"proxies": init_proxies(key, len(classes), dim)})
