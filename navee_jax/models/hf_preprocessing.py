"""The image preprocessing a foundation model was trained with, as navee_jax's data settings.

A transformers model directory's preprocessor_config.json (else its family's image-processor defaults) says how
images were resized, cropped and normalised: CLIP's and DINOv2's processors resize the shorter side and keep the
centre square (`data.resize='crop'`, `data.crop_fraction` = crop / shorter side), SigLIP's stretches to a square
(`'squash'`), all bicubic; mean / std, or [-1, 1] as mean 0.5 / std 0.5. The converter keeps these settings beside
the weights (vit.json), the config check requires them of a run that loads the weights, and the gallery fingerprint
records them with every embedding.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from navee_jax.errors import UserError

KEYS = ("resize", "crop_fraction", "interpolation", "mean", "std")  # the data keys a checkpoint fixes
# Each family's processor defaults (as the families' base checkpoints publish them) when the directory has none.
DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
             "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]},
    "dinov2": {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
               "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "siglip": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 3,
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's numbering, which the processors' configs use


def _side(size: Any, where: str) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        if size.get("height") and size.get("height") == size.get("width"):
            return int(size["height"])
    raise UserError(f"{where}: size {size!r} is not a shortest edge or a square, which navee_jax's resizing needs")


def processor_settings(processor: dict[str, Any], where: str) -> dict[str, Any]:
    """{image_size, resize, crop_fraction, interpolation, mean, std} of an image processor's config."""
    if processor.get("do_rescale", True) and not np.isclose(processor.get("rescale_factor", 1 / 255), 1 / 255):
        raise UserError(f"{where}: rescale_factor {processor['rescale_factor']} is not 1/255")
    resample = processor.get("resample", 3)
    if resample not in _RESAMPLE:
        raise UserError(f"{where}: resample {resample!r} is not bilinear (2) or bicubic (3)")
    normalize = processor.get("do_normalize", True)
    settings = {"interpolation": _RESAMPLE[resample],
                "mean": tuple(processor["image_mean"]) if normalize else (0.0, 0.0, 0.0),
                "std": tuple(processor["image_std"]) if normalize else (1.0, 1.0, 1.0)}
    side = _side(processor.get("size", 224), where)
    if processor.get("do_center_crop", False):
        crop = _side(processor.get("crop_size", side), where)
        return {"image_size": crop, "resize": "crop", "crop_fraction": crop / side, **settings}
    return {"image_size": side, "resize": "squash", "crop_fraction": 1.0, **settings}


def checkpoint_settings(directory: str, family: str) -> dict[str, Any]:
    """The preprocessing of a transformers model directory: its preprocessor_config.json, else the family's."""
    path = os.path.join(directory, "preprocessor_config.json")
    if not os.path.isfile(path):
        return processor_settings(DEFAULTS[family], f"{family} defaults")
    try:
        with open(path) as f:
            processor = {**DEFAULTS[family], **json.load(f)}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    return processor_settings(processor, path)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-4))


def data_flags(settings: dict[str, Any], keys: Any = None) -> str:
    """`--config.data.<key>=<value>` of `settings` (its `keys`, default all), as a shell takes them."""
    def value(v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, (tuple, list)):
            return "'(" + ", ".join(str(x) for x in v) + ")'"
        return f"{v:g}"

    return " ".join(f"--config.data.{k}={value(settings[k])}" for k in (keys or settings))


def settings_problem(source: str, family: str, want: dict[str, Any], data: ml_collections.ConfigDict) -> str | None:
    """Why `data` does not preprocess images as the model of `source` was trained (the flags that would), or None.
    data.image_size may differ from the checkpoint's: the ViT resizes its position grid."""
    wrong = [k for k in KEYS if not _same(data[k], want[k])]
    if not wrong:
        return None
    how = (f"resized to a shorter side of {round(want['image_size'] / want['crop_fraction'])} and centre-cropped to "
           f"{want['image_size']}" if want["resize"] == "crop" else f"resized to {want['image_size']}x"
                                                                      f"{want['image_size']}")
    values = lambda v: "(" + ", ".join(map(str, v)) + ")"  # noqa: E731
    return (f"{source} holds a {family} model trained on images {how} ({want['interpolation']}), normalised with "
            f"mean {values(want['mean'])} and std {values(want['std'])}: set "
            + data_flags(want, wrong))
