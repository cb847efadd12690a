"""Backbones and the embedding network built from `config.model`."""

from __future__ import annotations

import ml_collections
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.resnet import resnet18

BACKBONES = {"resnet18": resnet18}


def build_model(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> EmbeddingNet:
    if cfg.backbone not in BACKBONES:
        raise UserError(f"model.backbone: unknown backbone {cfg.backbone!r}; choose one of {sorted(BACKBONES)}")
    backbone = BACKBONES[cfg.backbone](width=cfg.width, rngs=rngs)
    return EmbeddingNet(backbone, cfg.embed_dim, cfg.normalize, rngs=rngs)
