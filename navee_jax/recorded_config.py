"""Configs recorded by older versions (a workdir's config.json, a checkpoint's resume fingerprint) lack the keys
added since. `complete` gives each the value those runs were trained with, so that the code reads every key
directly and an old workdir resumes and loads as it was."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import ml_collections

from navee_jax.errors import UserError

# Dotted key -> the value a run from before the key behaved as (as JSON writes it: tuples are lists).
KEYS_ADDED_LATER: dict[str, Any] = {"data.affine": False, "data.translate_px": 0.0, "model.block_widths": [],
                                    "model.tta_shift_px": 0, "data.label_levels": [], "split.test_fraction": 0.2,
                                    "split.validation_fraction": 0.1, "sampler.batch_size": 64,
                                    "split.seed": -1, "model.head_hidden": 0, "model.train_last_blocks": -1,
                                    "model.init_workdir": "", "data.crop_fraction": 1.0,
                                    "data.interpolation": "bilinear", "model.global_pool": False,
                                    "model.whiten": 0.0, "model.whiten_images": 4096}


def complete(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested `config` with every missing KEYS_ADDED_LATER key set to its old value."""
    out = copy.deepcopy(config)
    for dotted, value in KEYS_ADDED_LATER.items():
        *sections, key = dotted.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node.setdefault(key, copy.deepcopy(value))
    return out


def read_config(workdir: str, named: str | None = None) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json, `complete`d); `named`: how the user named the
    workdir, in the message when it is not one."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{named or workdir!r} is not a training workdir: {path} not found")
    with open(path) as f:
        return ml_collections.ConfigDict(complete(json.load(f)))
