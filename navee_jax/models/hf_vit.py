"""Hugging Face `transformers` vision towers -> navee_jax ViTs: CLIPVisionModel(WithProjection) (or a whole
CLIPModel, its text side skipped), Dinov2Model, Dinov2WithRegistersModel and SiglipVisionModel (or a whole
SiglipModel), read from a model directory's config.json and *.safetensors without torch.

    family, model = load_hf_vit("path/to/clip-vit-base-patch16")   # a directory as save_pretrained writes it

or, converted once (`python -m navee_jax.models.convert --arch=hf_vit --src=<that directory> --out=<dir>`: an
Orbax checkpoint, and vit.json with the architecture and the preprocessing), from <dir> without safetensors.

The mapping is by name (`hf_name`), with layouts converted: a conv (O, I, H, W) -> (H, W, I, O), a linear
(out, in) -> (in, out), SigLIP's packed attention input projection split into query, key and value. A file that
does not fit is one line naming the first missing, misshapen or unexpected tensor.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.hf_preprocessing import checkpoint_settings
from navee_jax.models.vit import ViT, ViTSpec
from navee_jax.models.weight_files import read_state_dict

VIT_JSON = "vit.json"  # beside a converted checkpoint: {"family", "spec", "preprocessing"}

FAMILIES = {"clip": "clip", "clip_vision_model": "clip", "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
            "siglip": "siglip", "siglip_vision_model": "siglip"}
# Tensors of a checkpoint that the vision tower does not use: the text side of a two-tower model, DINOv2's
# masked-image-modelling token, buffers some versions saved.
_IGNORED = re.compile(r"^(text_model\.|text_projection\.|logit_scale|logit_bias|embeddings\.mask_token$|"
                      r".*position_ids$)")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
def hf_spec(config: Mapping[str, Any], has_projection: bool) -> tuple[str, ViTSpec]:
    """(family, architecture) from a transformers config.json (a vision config, or a two-tower one holding
    `vision_config`)."""
    model_type = config.get("model_type", "")
    if model_type not in FAMILIES:
        raise UserError(f"config.json: model_type {model_type!r} is not a supported vision tower; expected one of "
                        f"{sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    vision = config.get("vision_config", config) if model_type in ("clip", "siglip") else config
    if vision.get("use_swiglu_ffn"):
        raise UserError("config.json: use_swiglu_ffn=True (DINOv2 giant) is not supported")
    common = dict(image_size=vision["image_size"], patch_size=vision["patch_size"], dim=vision["hidden_size"],
                  depth=vision["num_hidden_layers"], heads=vision["num_attention_heads"],
                  mlp_dim=vision.get("intermediate_size", int(vision.get("mlp_ratio", 4) * vision["hidden_size"])),
                  activation=vision.get("hidden_act", "gelu"), layer_norm_eps=vision.get("layer_norm_eps", 1e-6))
    if family == "clip":
        spec = ViTSpec(**common, patch_bias=False, pre_norm=True,
                       projection_dim=config.get("projection_dim", vision.get("projection_dim", 0))
                       if has_projection else 0)
    elif family == "dinov2":
        spec = ViTSpec(**common, layer_scale=True, registers=vision.get("num_register_tokens", 0),
                       antialias_positions=model_type == "dinov2_with_registers")
    else:
        spec = ViTSpec(**common, class_token=False, pooling="map" if vision.get("vision_use_head", True) else "mean")
    return family, spec


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None


def hf_name(family: str, path: tuple[Any, ...]) -> str | tuple[str, int]:
    """The transformers tensor name of a ViT parameter path; SigLIP's head query / key / value are
    (packed name, index) into its in_proj tensors."""
    p = [str(x) for x in path]
    leaf = _LEAF.get(p[-1], p[-1])
    if family == "dinov2":
        top = {"patch": f"embeddings.patch_embeddings.projection.{leaf}", "cls_token": "embeddings.cls_token",
               "positions": "embeddings.position_embeddings", "registers": "embeddings.register_tokens",
               "norm": f"layernorm.{leaf}"}
        if p[0] in top:
            return top[p[0]]
        i, part = p[1], p[2]
        sub = {"norm1": "norm1", "norm2": "norm2", "scale1": "layer_scale1.lambda1",
               "scale2": "layer_scale2.lambda1"}
        if part in ("scale1", "scale2"):
            return f"encoder.layer.{i}.{sub[part]}"
        if part == "attn":
            dense = {"q": "attention.attention.query", "k": "attention.attention.key",
                     "v": "attention.attention.value", "out": "attention.output.dense"}[p[3]]
            return f"encoder.layer.{i}.{dense}.{leaf}"
        if part == "mlp":
            return f"encoder.layer.{i}.mlp.{p[3]}.{leaf}"
        return f"encoder.layer.{i}.{sub[part]}.{leaf}"
    # CLIP and SigLIP share the names of their towers (without the "vision_model." of a two-tower checkpoint).
    top = {"patch": f"embeddings.patch_embedding.{leaf}",
           "cls_token": "embeddings.class_embedding",
           "positions": "embeddings.position_embedding.weight",
           "pre_norm": f"pre_layrnorm.{leaf}", "norm": f"post_layernorm.{leaf}",
           "projection": "visual_projection.weight"}
    if p[0] in top:
        return top[p[0]]
    if p[0] == "pool":  # SigLIP's head
        if p[1] == "probe":
            return "head.probe"
        if p[1] == "attn":
            if p[2] == "out":
                return f"head.attention.out_proj.{leaf}"
            return (f"head.attention.in_proj_{leaf}", "qkv".index(p[2]))
        if p[1] == "norm":
            return f"head.layernorm.{leaf}"
        return f"head.mlp.{p[2]}.{leaf}"
    i, part = p[1], p[2]
    if part == "attn":
        return f"encoder.layers.{i}.self_attn.{p[3]}_proj.{leaf}"
    if part == "mlp":
        return f"encoder.layers.{i}.mlp.{p[3]}.{leaf}"
    return f"encoder.layers.{i}.layer_norm{part[-1]}.{leaf}"


def _to_ours(array: np.ndarray, shape: tuple[int, ...], kernel: bool) -> np.ndarray:
    if kernel:  # conv (O, I, H, W) -> (H, W, I, O); linear (out, in) -> (in, out)
        return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    if array.size == int(np.prod(shape)):  # (1, 1, D) tokens and probes, (1, T, D) position tables -> ours
        return array.reshape(shape)
    return array


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of the directory's *.safetensors files (sharded checkpoints too), as float32 numpy arrays."""
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise UserError(f"{directory}: no *.safetensors file (save the model with save_pretrained, "
                        f"safe_serialization=True)")
    return {k: v for f in files for k, v in read_state_dict(f).items()}


def load_hf_vit(directory: str, *, rngs: nnx.Rngs | None = None) -> tuple[str, ViT]:
    """(family, filled ViT) from a transformers model directory (config.json + *.safetensors)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{directory}: no config.json (a directory written by transformers' save_pretrained)")
    config = read_json(config_path)
    tensors = read_safetensors(directory)
    family, spec = hf_spec(config, has_projection="visual_projection.weight" in tensors)
    model = ViT(spec, rngs=rngs or nnx.Rngs(0))
    fill_from_hf(model, family, tensors, directory)
    return family, model


def fill_from_hf(model: ViT, family: str, tensors: Mapping[str, np.ndarray], source: str) -> None:
    """Fills `model`'s parameters in place from `tensors`, checked: every one present and of its shape, none
    left over."""
    # transformers saves a tower's names under "vision_model." inside a two-tower model or beside a projection, and
    # without it when the tower is saved alone.
    tensors = {k.removeprefix("vision_model."): v for k, v in tensors.items()}
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    used, values = set(), []
    for path, var in flat:
        name = hf_name(family, path)
        packed, index = (name, None) if isinstance(name, str) else name
        if packed not in tensors:
            raise UserError(f"{source}: missing tensor {packed!r} that the {family} ViT needs (wrong architecture "
                            f"or config.json?)")
        array = tensors[packed]
        if index is not None:  # a third of SigLIP's packed query / key / value projection
            array = np.split(array, 3, axis=0)[index]
        array = _to_ours(array, tuple(var.shape), kernel=str(path[-1]) == "kernel")
        if array.shape != tuple(var.shape):
            raise UserError(f"{source}: tensor {packed!r} has shape {tuple(tensors[packed].shape)}, which does not "
                            f"fit the {family} ViT's {tuple(var.shape)}")
        used.add(packed)
        values.append((path, var.replace(jnp.asarray(array, var.dtype))))
    extra = sorted(k for k in tensors if k not in used and not _IGNORED.match(k))
    if extra:
        raise UserError(f"{source}: unexpected tensor {extra[0]!r} that the {family} ViT does not have "
                        f"({len(extra)} in all; wrong architecture?)")
    nnx.update(model, nnx.from_flat_state(values))


def pretrained_settings(directory: str) -> tuple[str, dict[str, Any]] | None:
    """(family, preprocessing) of a converted or transformers model directory; None for anything else."""
    if os.path.isfile(os.path.join(directory, VIT_JSON)):
        meta = read_json(os.path.join(directory, VIT_JSON))
        settings = meta["preprocessing"]
        return meta["family"], {**settings, "mean": tuple(settings["mean"]), "std": tuple(settings["std"])}
    if not os.path.isfile(os.path.join(directory, "config.json")):
        return None
    family = FAMILIES.get(read_json(os.path.join(directory, "config.json")).get("model_type", ""))
    return None if family is None else (family, checkpoint_settings(directory, family))
