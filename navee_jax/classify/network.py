"""The classifier's network: `config.model`'s backbone with a linear head of one logit per class."""

from __future__ import annotations

import ml_collections
from flax import nnx

from navee_jax.models import build_model
from navee_jax.models.embedding import EmbeddingNet


def build_classifier(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs,
                     tuned_for_cpu: bool = False) -> EmbeddingNet:
    """`config.model`'s backbone (and pretrained weights) with a linear head of `num_classes` logits."""
    model_cfg = ml_collections.ConfigDict(config.model.to_dict())
    model_cfg.embed_dim, model_cfg.normalize = num_classes, False
    return build_model(model_cfg, rngs, config.data.image_size, cpu_tuned=tuned_for_cpu)
