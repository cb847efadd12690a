"""A category for each new photo from a trained classifier workdir (`method='classifier'`): its top-k classes
with their probabilities, through the same image handling as the recognizer (paths, PIL images or arrays; an
unreadable image is an error row, the others go on)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from navee_jax.classify.trained import TrainedClassifier
from navee_jax.recognize.api import describe, image_list, map_images


@dataclasses.dataclass(frozen=True)
class CategoryPrediction:
    image: str
    top_k: list[tuple[str, float]]  # (class, probability), most probable first; [] for an error row
    error: str | None = None


def predict_categories(classifier: TrainedClassifier, images: Any, k: int = 5) -> list[CategoryPrediction]:
    """The `k` most probable classes of each image (ties: the lower class index first)."""
    items = image_list(images)
    names = classifier.class_names
    probs, errors = map_images(items, lambda cat: classifier.probabilities(cat, np.arange(len(cat))), len(names))
    out = []
    for i, item in enumerate(items):
        if i in errors:
            out.append(CategoryPrediction(describe(item, i), [], errors[i]))
            continue
        order = np.argsort(-probs[i], kind="stable")[:k]
        out.append(CategoryPrediction(describe(item, i), [(names[c], float(probs[i][c])) for c in order]))
    return out
