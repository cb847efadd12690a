"""Vision Transformers in Flax NNX, in the three families whose weights users bring (navee_jax.models.hf_vit):

* CLIP: patches without bias, a class token, a LayerNorm before the blocks ("pre_layrnorm"), quick-GELU, the class
  token normalised and projected (`projection_dim`) as the image embedding;
* DINOv2: a class token, optional register tokens (no position), LayerScale on both branches, exact GELU, the
  class token after the final LayerNorm;
* SigLIP: no class token, tanh-approximated GELU, the final LayerNorm, then attention pooling by a learned probe
  (multi-head attention, LayerNorm and MLP: its "head").

The blocks are pre-norm (x + attn(norm1(x)), x + mlp(norm2(x))). Position embeddings are learned for the
`image_size` grid and resized bicubically, as `transformers` does with `interpolate_pos_encoding=True`, for any
other input size (a multiple of the patch). Input: (N, H, W, C) normalised images; output (N, out_features).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.resize import resize_grid

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
POOLINGS = ("cls", "mean", "map")  # the class token, the mean of the patch tokens, the attention-pooling head


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """One architecture: sizes and each family's variants (defaults: a plain ViT with a class token)."""

    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    class_token: bool = True
    registers: int = 0
    patch_bias: bool = True
    pre_norm: bool = False
    layer_scale: bool = False
    pooling: str = "cls"
    projection_dim: int = 0  # CLIP's visual projection (no bias); 0: none
    antialias_positions: bool = False  # DINOv2 with registers resizes its position grid antialiased

    def check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UserError(f"ViT activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"ViT pooling {self.pooling!r}: expected one of {POOLINGS}")
        if self.pooling == "cls" and not self.class_token:
            raise UserError("ViT pooling 'cls' needs a class token")
        if self.dim % self.heads:
            raise UserError(f"ViT width {self.dim} is not divisible by its {self.heads} heads")
        if self.image_size % self.patch_size:
            raise UserError(f"ViT image_size {self.image_size} is not a multiple of its patch {self.patch_size}")


# The standard sizes (Dosovitskiy et al.), and DINOv2's patch-14 ones (S/14, B/14; L/14 is also CLIP's).
SIZES = {"S/16": dict(patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536),
         "S/14": dict(patch_size=14, dim=384, depth=12, heads=6, mlp_dim=1536),
         "B/14": dict(patch_size=14, dim=768, depth=12, heads=12, mlp_dim=3072),
         "B/16": dict(patch_size=16, dim=768, depth=12, heads=12, mlp_dim=3072),
         "B/32": dict(patch_size=32, dim=768, depth=12, heads=12, mlp_dim=3072),
         "L/14": dict(patch_size=14, dim=1024, depth=24, heads=16, mlp_dim=4096)}


class Attention(nnx.Module):
    """Multi-head attention with separate query, key, value and output projections (all with bias)."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.q, self.k, self.v, self.out = (nnx.Linear(dim, dim, rngs=rngs) for _ in range(4))

    def __call__(self, queries: jax.Array, context: jax.Array) -> jax.Array:
        def split(x):  # (N, T, D) -> (N, heads, T, D / heads)
            return x.reshape(*x.shape[:2], self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.q(queries)), split(self.k(context)), split(self.v(context))
        logits = jnp.einsum("nhqd,nhkd->nhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        mixed = jnp.einsum("nhqk,nhkd->nhqd", weights, v).transpose(0, 2, 1, 3)
        return self.out(mixed.reshape(*mixed.shape[:2], -1))


class MLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, activation: str, *, rngs: nnx.Rngs):
        self.fc1, self.fc2 = nnx.Linear(dim, hidden, rngs=rngs), nnx.Linear(hidden, dim, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class Block(nnx.Module):
    def __init__(self, spec: ViTSpec, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(spec.dim, epsilon=spec.layer_norm_eps, rngs=rngs)
        self.attn = Attention(spec.dim, spec.heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(spec.dim, epsilon=spec.layer_norm_eps, rngs=rngs)
        self.mlp = MLP(spec.dim, spec.mlp_dim, spec.activation, rngs=rngs)
        scale = (lambda: nnx.Param(jnp.ones((spec.dim,)))) if spec.layer_scale else (lambda: None)
        self.scale1, self.scale2 = scale(), scale()

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm1(x)
        h = self.attn(h, h)
        x = x + (h * self.scale1 if self.scale1 is not None else h)
        h = self.mlp(self.norm2(x))
        return x + (h * self.scale2 if self.scale2 is not None else h)


class AttentionPool(nnx.Module):
    """SigLIP's head: a learned probe attends over the tokens, then a residual MLP on the normalised result."""

    def __init__(self, spec: ViTSpec, *, rngs: nnx.Rngs):
        self.probe = nnx.Param(jax.random.normal(rngs.params(), (spec.dim,)) * 0.02)
        self.attn = Attention(spec.dim, spec.heads, rngs=rngs)
        self.norm = nnx.LayerNorm(spec.dim, epsilon=spec.layer_norm_eps, rngs=rngs)
        self.mlp = MLP(spec.dim, spec.mlp_dim, spec.activation, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        x = self.attn(probe, tokens)
        return (x + self.mlp(self.norm(x)))[:, 0]


class ViT(nnx.Module):
    def __init__(self, spec: ViTSpec, in_channels: int = 3, *, rngs: nnx.Rngs):
        spec.check()
        self.spec = spec
        p, d = spec.patch_size, spec.dim
        self.patch = nnx.Conv(in_channels, d, (p, p), strides=(p, p), padding="VALID", use_bias=spec.patch_bias,
                              rngs=rngs)
        grid = spec.image_size // p
        init = nnx.initializers.truncated_normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (d,))) if spec.class_token else None
        self.registers = nnx.Param(init(rngs.params(), (spec.registers, d))) if spec.registers else None
        self.positions = nnx.Param(init(rngs.params(), (grid * grid + spec.class_token, d)))
        self.pre_norm = nnx.LayerNorm(d, epsilon=spec.layer_norm_eps, rngs=rngs) if spec.pre_norm else None
        self.blocks = nnx.List([Block(spec, rngs=rngs) for _ in range(spec.depth)])
        self.norm = nnx.LayerNorm(d, epsilon=spec.layer_norm_eps, rngs=rngs)
        self.pool = AttentionPool(spec, rngs=rngs) if spec.pooling == "map" else None
        self.projection = (nnx.Linear(d, spec.projection_dim, use_bias=False, rngs=rngs)
                           if spec.projection_dim else None)
        self.out_features = spec.projection_dim or d

    def stages_before_last_blocks(self, n: int) -> tuple[str, ...]:
        """The stages (as `model.frozen_stages` names them) below the last n blocks: the patch embedding, the
        tokens and positions, the pre-norm and the first depth - n blocks."""
        if not 0 <= n <= self.spec.depth:
            raise UserError(f"model.train_last_blocks={n}: this ViT has {self.spec.depth} blocks")
        below = [name for name in ("patch", "cls_token", "registers", "positions", "pre_norm")
                 if getattr(self, name) is not None]
        return (*below, *(f"blocks.{i}" for i in range(self.spec.depth - n)))

    def position_embeddings(self, grid_h: int, grid_w: int) -> jax.Array:
        """(class token +) grid_h * grid_w position embeddings: the trained grid's, resized to this one."""
        pos = self.positions[...]
        lead, patches = pos[:self.spec.class_token], pos[self.spec.class_token:]
        side = self.spec.image_size // self.spec.patch_size
        resized = resize_grid(patches.reshape(side, side, -1), grid_h, grid_w, self.spec.antialias_positions)
        return jnp.concatenate([lead, resized.reshape(grid_h * grid_w, -1)])

    def tokens(self, images: jax.Array) -> jax.Array:
        """(N, T, D): every token after the final LayerNorm (class token, registers, patches, in that order)."""
        h, w = images.shape[1:3]
        p = self.spec.patch_size
        if h % p or w % p:
            raise UserError(f"ViT: a {h}x{w} input is not a whole number of {p}x{p} patches; resize it to a "
                            f"multiple of {p}")
        x = self.patch(images)
        n, gh, gw, d = x.shape
        x = x.reshape(n, gh * gw, d)
        if self.cls_token is not None:
            x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (n, 1, d)), x], axis=1)
        x = x + self.position_embeddings(gh, gw).astype(x.dtype)
        if self.registers is not None:  # after the class token, without positions
            x = jnp.concatenate([x[:, :1], jnp.broadcast_to(self.registers[...].astype(x.dtype),
                                                            (n, self.spec.registers, d)), x[:, 1:]], axis=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.tokens(images)
        if self.spec.pooling == "cls":
            z = x[:, 0]
        elif self.spec.pooling == "mean":
            z = x[:, self.spec.class_token + self.spec.registers:].mean(axis=1)
        else:
            z = self.pool(x)
        z = self.projection(z) if self.projection is not None else z
        return z.astype(jnp.float32)  # a bf16 backbone (model.compute_dtype) hands float32 features to the head


def _factory(size: str) -> Callable[..., ViT]:
    def build(width: int = 0, *, rngs: nnx.Rngs, in_channels: int = 3, image_size: int = 224) -> ViT:
        """A plain ViT (class token, exact GELU) for `image_size` inputs; `width` is the ResNets' and unused."""
        return ViT(ViTSpec(image_size=image_size, **SIZES[size]), in_channels, rngs=rngs)

    return build


VIT_SIZES = {f"vit_{size.replace('/', '').lower()}": size for size in SIZES}  # vit_s16 -> S/16, ..., vit_l14
VIT_BACKBONES = {name: _factory(size) for name, size in VIT_SIZES.items()}


def backbone_name(spec: ViTSpec) -> str:
    """The `model.backbone` of a loaded tower's size, e.g. 'vit_b16' (or its patch, width and depth)."""
    named = [name for name in VIT_BACKBONES if matches_size(spec, name)]
    return named[0] if named else f"a ViT of patch {spec.patch_size}, width {spec.dim} and depth {spec.depth}"


def matches_size(spec: ViTSpec, backbone: str) -> bool:
    """Whether a loaded tower is the `backbone` size (its patch, width and depth)."""
    want = SIZES[VIT_SIZES[backbone]]
    return (spec.patch_size, spec.dim, spec.depth) == (want["patch_size"], want["dim"], want["depth"])
