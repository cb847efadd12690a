"""Configs recorded by older versions (a workdir's config.json, a checkpoint's resume fingerprint) lack the keys
added since. `complete` gives each the value those runs were trained with, so that the code reads every key
directly and an old workdir resumes and loads as it was."""

from __future__ import annotations

import copy
from typing import Any

# Dotted key -> the value a run from before the key behaved as (as JSON writes it: tuples are lists).
KEYS_ADDED_LATER: dict[str, Any] = {"data.affine": False, "data.translate_px": 0.0, "model.block_widths": [],
                                    "model.tta_shift_px": 0}


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
