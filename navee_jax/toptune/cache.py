"""The feature cache of top-tuning: the frozen backbone's features of every training image (and of augmented
views of it), computed once and kept on disk under a key of everything they depend on: the image files'
bytes (or in-memory pixels), the backbone's weights, and the preprocessing and augmentation settings. A changed
image, model or setting is a new key, so a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import augmented_batches, eval_batches

# The data keys that change what the backbone sees (image_size and resizing, colour, normalisation, augmentation).
DATA_KEYS = ("image_size", "resize", "crop_fraction", "interpolation", "fill", "grayscale", "binarize", "mean", "std",
             "flip", "rotation_deg", "crop_scale_min", "translate_px", "affine")


def cache_key(catalogue: Catalogue, indices: np.ndarray, backbone_state: Any, config: ml_collections.ConfigDict,
              views: int) -> str:
    """sha256 over the images' contents, in order, the backbone's arrays, the data settings and the views."""
    h = hashlib.sha256()
    for i in indices:
        if catalogue.paths is not None:
            with open(catalogue.paths[i], "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        else:
            h.update(np.ascontiguousarray(catalogue.pixels[i]).tobytes())
    if catalogue.quarter_turns is not None:  # rotated copies (data.rotated_classes) decode differently
        h.update(np.ascontiguousarray(catalogue.quarter_turns[indices]).tobytes())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(backbone_state)[0], key=lambda t: str(t[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    settings = {k: config.data[k] for k in DATA_KEYS if k in config.data}
    h.update(json.dumps({"data": settings, "views": views, "seed": config.seed}, sort_keys=True, default=list).encode())
    return h.hexdigest()


def cached_features(catalogue: Catalogue, indices: np.ndarray, config: ml_collections.ConfigDict, key: str,
                    embed: Callable[[np.ndarray], np.ndarray], views: int, cache_dir: str) -> tuple[np.ndarray, bool]:
    """((views, len(indices), D) float32 features, whether they came from the cache). View 0 is the plain image,
    views 1.. augmented as training augments (seeded by the config's seed and the view)."""
    path = os.path.join(cache_dir, f"{key}.npy")
    if os.path.exists(path):
        return np.load(path), True
    batch = config.eval.batch_size
    out = []
    for view in range(views):
        stream = (eval_batches(catalogue, indices, config.data, batch) if view == 0 else
                  augmented_batches(catalogue, indices, config.data, batch, aug_seed=config.seed * 1000 + view))
        out.append(np.concatenate([np.asarray(embed(images)) for images in stream]))
    features = np.stack(out).astype(np.float32)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, features)
    os.replace(tmp, path)  # whole or absent, also for a second process computing the same key
    return features, False
