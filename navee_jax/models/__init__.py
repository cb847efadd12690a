"""Backbones and the embedding network built from `config.model`."""

from __future__ import annotations

import os

import jax.numpy as jnp
import ml_collections
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.conv4 import conv4
from navee_jax.models.cpu_tuned import tune_for_cpu
from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.koch import koch
from navee_jax.models.resnet import resnet18, resnet50
from navee_jax.models.vgg import vgg16, vgg16_bn
from navee_jax.models.vit import VIT_BACKBONES

BACKBONES = {"resnet18": resnet18, "resnet50": resnet50, "conv4": conv4, "koch": koch, "vgg16": vgg16,
             "vgg16_bn": vgg16_bn, **VIT_BACKBONES}
# Built for one input size: flattened outputs (its feature size), a ViT's position grid.
_SIZED = ("conv4", "koch", *VIT_BACKBONES)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, image_size: int, *,
                cpu_tuned: bool = False) -> EmbeddingNet:
    """`cfg.backbone` (+ `cfg.pretrained` weights) behind the embedding head, for `image_size` inputs.

    With `cfg.compute_dtype='bfloat16'` the backbone computes in bf16 while its parameters (and
    BatchNorm statistics) stay float32; the head and the loss stay float32.

    `cpu_tuned` (pass `navee_jax.backend.cpu_tuned(mesh)`) installs the XLA:CPU backward passes of
    navee_jax.models.cpu_tuned in a ResNet backbone: the same function, parameters and state, faster on
    CPU only; other backbones are unaffected.
    """
    if cfg.backbone not in BACKBONES:
        raise UserError(f"model.backbone: unknown backbone {cfg.backbone!r}; choose one of {sorted(BACKBONES)}")
    if cfg.compute_dtype not in COMPUTE_DTYPES:
        raise UserError(f"model.compute_dtype: {cfg.compute_dtype!r} is not one of {sorted(COMPUTE_DTYPES)}")
    kwargs = {"in_channels": cfg.in_channels}
    if cfg.backbone in _SIZED:
        kwargs["image_size"] = image_size
    if cfg.backbone == "conv4":
        kwargs["block_widths"], kwargs["global_pool"] = tuple(cfg.block_widths), cfg.global_pool
    if cfg.backbone.startswith("resnet"):
        kwargs["pool_grid"], kwargs["num_stages"] = cfg.get("pool_grid", 1), cfg.get("num_stages", 4)
    if cfg.backbone.startswith("vgg"):
        kwargs["remove_top_layers"] = cfg.remove_top_layers
    if cfg.backbone in VIT_BACKBONES and cfg.pretrained:
        backbone = _pretrained_vit(cfg, rngs)
    else:
        backbone = BACKBONES[cfg.backbone](width=cfg.width, rngs=rngs, **kwargs)
    if cfg.pretrained and cfg.backbone not in VIT_BACKBONES:
        from navee_jax.models.convert import load_pretrained

        load_pretrained(backbone, cfg.pretrained)
    if cfg.compute_dtype != "float32":
        # Conv / Linear / BatchNorm compute in `dtype` and keep float32 parameters (param_dtype).
        backbone.set_attributes(dtype=COMPUTE_DTYPES[cfg.compute_dtype], raise_if_not_found=False)
    if cpu_tuned:
        tune_for_cpu(backbone)
    return EmbeddingNet(backbone, cfg.embed_dim, cfg.normalize, cfg.head_batchnorm, cfg.head_hidden,
                        cfg.whiten > 0, rngs=rngs)


def _pretrained_vit(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """A ViT of `cfg.backbone`'s size from a transformers model directory (CLIP, DINOv2, SigLIP) or its conversion."""
    from navee_jax.models.convert import load_pretrained_vit
    from navee_jax.models.vit import matches_size

    if not os.path.isdir(cfg.pretrained):
        raise UserError(f"model.pretrained={cfg.pretrained!r}: a ViT loads a transformers model directory "
                        f"(config.json + *.safetensors, as save_pretrained writes it) or its conversion by "
                        f"python -m navee_jax.models.convert --arch=hf_vit")
    family, model = load_pretrained_vit(cfg.pretrained, rngs=rngs)
    if not matches_size(model.spec, cfg.backbone):
        s = model.spec
        raise UserError(f"model.pretrained={cfg.pretrained!r} is a {family} ViT of patch {s.patch_size}, width {s.dim} "
                        f"and depth {s.depth}, not a {cfg.backbone}: set model.backbone to its size")
    if cfg.in_channels != 3:
        raise UserError(f"model.in_channels={cfg.in_channels}: pretrained ViTs take 3-channel images")
    return model
