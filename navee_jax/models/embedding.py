"""Backbone + embedding head: features -> linear projection to embed_dim (or an MLP: a hidden ReLU layer of
hidden_dim first) -> optional BatchNorm -> optional L2 norm. embed_dim 0 keeps the backbone's features as they
are (no projection), as Koch et al.'s siamese twin, whose 4096 sigmoid units are its embedding. With `whiten`
the result passes through a `Whitening` fitted on training images (navee_jax.models.whitening)."""

from __future__ import annotations

import jax
from flax import nnx

from navee_jax.distances import l2_normalize
from navee_jax.models.whitening import Whitening


class EmbeddingNet(nnx.Module):
    def __init__(self, backbone: nnx.Module, embed_dim: int, normalize: bool, batchnorm: bool = False,
                 hidden_dim: int = 0, whiten: bool = False, *, rngs: nnx.Rngs):
        self.backbone = backbone
        hidden = hidden_dim if embed_dim else 0  # embed_dim 0 has no head at all
        self.head_hidden = nnx.Linear(backbone.out_features, hidden, rngs=rngs) if hidden else None
        self.head = nnx.Linear(hidden or backbone.out_features, embed_dim, rngs=rngs) if embed_dim else None
        self.out_features = embed_dim or backbone.out_features
        self.head_bn = nnx.BatchNorm(self.out_features, momentum=0.9, epsilon=1e-5, rngs=rngs) if batchnorm else None
        self.normalize = normalize
        self.whitening = Whitening(self.out_features, renormalize=normalize) if whiten else None

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.embed_features(self.backbone(images))

    def embed_features(self, z: jax.Array) -> jax.Array:
        """The head on backbone features (what top-tuning trains on cached features)."""
        if self.head_hidden is not None:
            z = jax.nn.relu(self.head_hidden(z))
        if self.head is not None:
            z = self.head(z)
        if self.head_bn is not None:
            z = self.head_bn(z)
        z = l2_normalize(z) if self.normalize else z
        return self.whitening(z) if self.whitening is not None else z
