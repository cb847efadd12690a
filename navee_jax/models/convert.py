r"""torchvision weights -> Flax NNX backbones: reading, layout mapping, and a command line converter; and
transformers' ViTs (CLIP, DINOv2, SigLIP: navee_jax.models.hf_vit) through the same command.

    python -m navee_jax.models.convert --arch=resnet18 --src=resnet18-f37072fd.pth --out=weights/resnet18
    python -m navee_jax.models.convert --arch=hf_vit --src=path/to/dinov2-base --out=weights/dinov2-base

writes an Orbax checkpoint of the converted model, which `load_pretrained` (like the
`model.pretrained` config key) reads back, as it reads .pth / .pt / .safetensors files directly.
Converting once spares every training run the PyTorch dependency. A ViT's checkpoint has vit.json beside it: the
family, the architecture and the image preprocessing of its processor (navee_jax.models.hf_preprocessing), which
the command prints as the flags to train with.

The mapping is by name: the backbones' attribute paths are torchvision's state_dict names
(conv1, layer1.0.bn2, features.0, classifier.6, ...), except Flax leaf names (kernel / scale / mean /
var for weight / weight / running_mean / running_var) and ResNet's Downsample (.conv / .bn for
torchvision's downsample.0 / downsample.1). Layouts: conv (O, I, H, W) -> (H, W, I, O); linear
(out, in) -> (in, out); VGG's fc6 also has its input reordered from torch's (C, 7, 7) flattening to
the NHWC (7, 7, C) one. Bad input ends in a one-line UserError naming the first mismatched tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from navee_jax.cli import fail
from navee_jax.errors import UserError
from navee_jax.models.hf_preprocessing import checkpoint_settings, data_flags
from navee_jax.models.hf_vit import VIT_JSON, load_hf_vit, pretrained_settings, read_json
from navee_jax.models.resnet import ResNet, resnet18, resnet50
from navee_jax.models.vgg import POOLED_SIZE, VGG, vgg16, vgg16_bn
from navee_jax.models.vit import VIT_BACKBONES, ViT, ViTSpec, backbone_name
from navee_jax.models.weight_files import first_line, read_state_dict

# What converted weights fill: parameters and BatchNorm running statistics (not e.g. dropout RNG state).
_LOADED = nnx.Any(nnx.Param, nnx.BatchStat)
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_TORCH_DOWNSAMPLE = {"conv": "0", "bn": "1"}
HF_VIT = "hf_vit"  # --arch for a transformers ViT directory (navee_jax.models.hf_vit)


def _resnet_num_classes(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {"num_classes": state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 0}


def _vgg_num_classes(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
    head = state_dict.get("classifier.6.weight")
    return {"num_classes": head.shape[0] if head is not None else 1000}


# arch -> (factory, constructor arguments read from the file: the head's size, so fine-tuned weights convert too)
ARCHS: dict[str, tuple[Callable[..., nnx.Module], Callable[[Mapping[str, np.ndarray]], dict[str, int]]]] = {
    "resnet18": (resnet18, _resnet_num_classes),
    "resnet50": (resnet50, _resnet_num_classes),
    "vgg16": (vgg16, _vgg_num_classes),
    "vgg16_bn": (vgg16_bn, _vgg_num_classes),
}


def torch_name(path: tuple[Any, ...]) -> str:
    """The torchvision state_dict name of a Flax parameter path, e.g. ('layer2', 0, 'downsample', 'conv',
    'kernel') -> 'layer2.0.downsample.0.weight'."""
    parts = [str(p) for p in path]
    parts[-1] = _TORCH_LEAF[parts[-1]]
    for i in range(1, len(parts) - 1):
        if parts[i - 1] == "downsample":
            parts[i] = _TORCH_DOWNSAMPLE[parts[i]]
    return ".".join(parts)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # (H, W, I, O) -> (O, I, H, W)
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))  # linear (in, out) -> (out, in); vectors unchanged


def _to_flax_layout(model: nnx.Module, name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2 and isinstance(model, VGG) and name == "classifier.0.weight":
        # torch flattens the pooled (C, 7, 7) map, Flax the (7, 7, C) one: reorder fc6's inputs.
        h, w = POOLED_SIZE
        n_out = array.shape[0]
        return array.reshape(n_out, model.pooled_channels, h, w).transpose(2, 3, 1, 0).reshape(-1, n_out)
    return array.T if array.ndim == 2 else array


def _absent_head(model: nnx.Module, name: str) -> bool:
    """Whether `name` belongs to a top layer the model was built without: the fc of a headless ResNet, the
    stages past a ResNet's num_stages, the classifier entries dropped by VGG's remove_top_layers. Their tensors
    are skipped, not errors, so that full ImageNet weights load into a feature extractor."""
    if isinstance(model, ResNet):
        stage = re.match(r"layer(\d+)\.", name)
        if stage is not None and model.num_stages < int(stage[1]) <= 4:  # torchvision's ResNets have 4 stages
            return True
        return model.fc is None and name.startswith("fc.")
    if isinstance(model, VGG):
        match = re.match(r"classifier\.(\d+)\.", name)
        return match is not None and int(match[1]) >= len(model.classifier)
    return False


def _check(model: nnx.Module, expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
           source: str) -> None:
    """A one-line UserError for the first missing tensor, else the first misshapen, else the first unexpected
    one: a missing name says most about a wrong architecture, so it is reported before shapes."""
    model_name = type(model).__name__
    for name, shape in expected.items():
        if name not in found:
            raise UserError(f"{source}: missing tensor {name!r} (shape {shape}) that {model_name} needs "
                            f"(wrong architecture?)")
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(found[name])} but {model_name} expects "
                            f"{tuple(shape)}")
    for name in found:
        if name not in expected and not _absent_head(model, name):
            raise UserError(f"{source}: unexpected tensor {name!r} that {model_name} does not have "
                            f"(wrong architecture?)")


def _fill(model: nnx.Module, values: Mapping[tuple[Any, ...], np.ndarray]) -> None:
    flat = nnx.to_flat_state(nnx.state(model, _LOADED))
    nnx.update(model, nnx.from_flat_state([(p, v.replace(jnp.asarray(values[p], v.dtype))) for p, v in flat]))


def torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """The torchvision state_dict that `model` loads: tensor name -> torch shape (no num_batches_tracked)."""
    return {torch_name(p): _torch_shape(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, _LOADED))}


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
                          ) -> list[str]:
    """Fills `model` (a ResNet or VGG, concrete or from nnx.eval_shape) in place from a torchvision
    state_dict; returns the names of the tensors used. `source` names the input in error messages.
    Only parameters and BatchNorm statistics are filled: an abstract model's dropout RNG state stays
    abstract, so such a model is for eval mode (or saving) only."""
    targets = {torch_name(p): (p, v) for p, v in nnx.to_flat_state(nnx.state(model, _LOADED))}
    found = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    _check(model, torch_shapes(model), found, source)
    _fill(model, {p: _to_flax_layout(model, name, np.asarray(state_dict[name])) for name, (p, _) in targets.items()})
    return list(targets)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def save_checkpoint(model: nnx.Module, directory: str) -> None:
    """The model's parameters and BatchNorm statistics as an Orbax checkpoint (the nnx.State pure dict)."""
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.abspath(directory), nnx.to_pure_dict(nnx.state(model, _LOADED)))
    except Exception as e:  # orbax / tensorstore raise many types: unwritable directory, full disk, ...
        raise UserError(f"{directory}: could not write the checkpoint ({first_line(e)})") from None


def _load_checkpoint(model: nnx.Module, directory: str) -> list[str]:
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(os.path.abspath(directory))
    except Exception as e:  # orbax raises many types; all mean "not a checkpoint of ours"
        raise UserError(f"{directory}: not a checkpoint written by python -m navee_jax.models.convert "
                        f"({first_line(e)})") from None
    found = _flatten(tree)
    targets = {".".join(map(str, p)): (p, v) for p, v in nnx.to_flat_state(nnx.state(model, _LOADED))}
    _check(model, {name: tuple(v.shape) for name, (_, v) in targets.items()},
           {k: v.shape for k, v in found.items()}, directory)
    _fill(model, {p: found[name] for name, (p, _) in targets.items()})
    return list(targets)


def load_pretrained(backbone: nnx.Module, path: str) -> list[str]:
    """Fills `backbone` in place from a directory written by this module's CLI, or directly from a
    torchvision .pth / .pt / .safetensors state_dict; returns the names of the tensors loaded.

    Tensors of top layers the backbone was built without (a headless ResNet's fc, VGG layers
    removed by remove_top_layers) are skipped, so ImageNet classifiers load into feature extractors.
    """
    if os.path.isdir(path):
        return _load_checkpoint(backbone, path)
    return load_torch_state_dict(backbone, read_state_dict(path), source=path)


def convert(arch: str, src: str, out: str) -> nnx.Module:
    """Reads torchvision weights of `arch` from `src`, writes them as an Orbax checkpoint to `out`
    (which must not exist yet), and returns the filled model."""
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    prepare_output(out)
    factory, file_args = ARCHS[arch]
    state_dict = read_state_dict(src)
    # Built abstractly: the weights come from the file, so random initialisation would be wasted work.
    model = nnx.eval_shape(lambda: factory(rngs=nnx.Rngs(0), **file_args(state_dict)))
    load_torch_state_dict(model, state_dict, source=src)
    save_checkpoint(model, out)
    return model


def prepare_output(out: str) -> None:
    """Creates `out`'s parent, or one line saying why not (before any weights are read): orbax reports an existing
    or unwritable directory from background threads, as pages of tracebacks."""
    if os.path.exists(out):
        raise UserError(f"{out} already exists; choose a new --out directory (nothing was written)")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create its parent directory ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{out}: its parent directory {parent} is not writable")


def convert_hf_vit(src: str, out: str) -> tuple[str, ViT]:
    """Writes the transformers model directory `src` as an Orbax checkpoint to `out` (which must not exist), with
    vit.json: its family, architecture and preprocessing. Returns (family, the filled model)."""
    prepare_output(out)
    family, model = load_hf_vit(src)
    save_checkpoint(model, out)
    with open(os.path.join(out, VIT_JSON), "w") as f:
        json.dump({"family": family, "spec": dataclasses.asdict(model.spec),
                   "preprocessing": checkpoint_settings(src, family)}, f, indent=1)
    return family, model


def load_pretrained_vit(directory: str, *, rngs: nnx.Rngs | None = None) -> tuple[str, ViT]:
    """(family, filled ViT) from a converted directory (vit.json) or a transformers one (config.json)."""
    if not os.path.isfile(os.path.join(directory, VIT_JSON)):
        return load_hf_vit(directory, rngs=rngs)
    meta = read_json(os.path.join(directory, VIT_JSON))
    model = ViT(ViTSpec(**meta["spec"]), rngs=rngs or nnx.Rngs(0))
    load_pretrained(model, directory)
    return meta["family"], model


class _ArgumentParser(argparse.ArgumentParser):
    """Usage mistakes end like every other bad input: one line, exit status 2 (argparse prints usage too)."""

    def error(self, message: str) -> None:
        fail(message)


def main(argv: list[str] | None = None) -> None:
    parser = _ArgumentParser(prog="python -m navee_jax.models.convert",
                             description="Convert torchvision weights, or a transformers ViT (CLIP, DINOv2, SigLIP), "
                                         "to a Flax checkpoint for model.pretrained.")
    parser.add_argument("--arch", required=True, choices=[*sorted(ARCHS), HF_VIT],
                        help=f"the torchvision architecture, or {HF_VIT}: a transformers model directory")
    parser.add_argument("--src", required=True, help="a .pth / .pt / .safetensors torchvision state_dict, or with "
                        f"--arch={HF_VIT} the directory save_pretrained wrote (config.json, *.safetensors)")
    parser.add_argument("--out", required=True, help="the checkpoint directory to write (must not exist)")
    args = parser.parse_args(argv)
    try:
        if args.arch == HF_VIT:
            family, model = convert_hf_vit(args.src, args.out)
            backbone = backbone_name(model.spec)
            name = f"{family} {backbone}"
            _, settings = pretrained_settings(args.out)
            flags = [f"--config.model.backbone={backbone}"] if backbone in VIT_BACKBONES else []
            flags += [f"--config.model.pretrained={args.out}", data_flags(settings)]
            use = "\nuse it with " + " ".join(flags) + ("" if flags[0].startswith("--config.model.backbone") else
                                                         "\n(no model.backbone has this size yet: vit.py's SIZES)")
        else:
            model, name, use = convert(args.arch, args.src, args.out), args.arch, ""
    except UserError as e:
        fail(str(e))
    params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"wrote {name} ({params:,} parameters, {model.out_features} outputs) to {args.out}{use}")


if __name__ == "__main__":
    main()
