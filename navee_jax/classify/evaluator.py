"""Accuracy of a classifier on the validation and test parts of a stratified split, at the label column and
at each coarser level (`data.label_levels`)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import ml_collections
import numpy as np
from jax.sharding import Mesh
from scipy.special import softmax

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.splits import Split
from navee_jax.embed import EmbedFn, embed_in_batches
from navee_jax.errors import UserError


def parent_of_class(labels: np.ndarray, parents: tuple[str, ...] | np.ndarray, num_classes: int) -> list[str]:
    """Per class, the coarser label most of its images carry (ties: the first in sorted order); how a class
    prediction reads at a coarser level where the columns do not nest exactly. A class with no image: ''."""
    out = []
    for c in range(num_classes):
        counts = Counter(p for p, lab in zip(parents, labels) if lab == c)
        out.append(min(counts, key=lambda p: (-counts[p], p)) if counts else "")
    return out


def level_accuracy(predicted: np.ndarray, own: np.ndarray, class_parent: list[str]) -> float:
    """Accuracy at a coarser level: each predicted class read as its class's parent, against the image's own."""
    return float(np.mean(np.asarray(class_parent, dtype=object)[predicted] == own))


class ClassificationEvaluator:
    """Yields ("accuracy", validation accuracy: it picks the best checkpoint; the test accuracy when the
    split has no validation part), ("test_accuracy", ...), ("test_accuracy/<level>", ...) for each
    `data.label_levels` column, and when `final` the same on the training images (un-augmented)."""

    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict, logits_fn: EmbedFn,
                 mesh: Mesh):
        self.catalogue, self.split, self.config, self.logits_fn, self.mesh = catalogue, split, config, logits_fn, mesh
        labels, n = catalogue.labels, len(catalogue.class_names)
        levels = catalogue.levels or {}
        self.class_parents = {name: parent_of_class(labels[split.train], np.asarray(values)[split.train], n)
                              for name, values in levels.items()}

    def predict(self, state: Any, images: np.ndarray) -> np.ndarray:
        """(n, C) class probabilities of the catalogue images `images` (un-augmented)."""
        bs = self.config.eval.batch_size
        logits = embed_in_batches(self.logits_fn, state, eval_batches(self.catalogue, images, self.config.data, bs),
                                  bs, self.mesh)
        if not np.isfinite(logits).all():
            raise UserError("classifier logits contain NaN/inf: the model diverged; lower --config.optim.lr")
        return softmax(logits, axis=1)

    def scores(self, state: Any, images: np.ndarray, part: str) -> Iterator[tuple[str, float]]:
        predicted = self.predict(state, images).argmax(axis=1)
        yield f"{part}_accuracy", float(np.mean(predicted == self.catalogue.labels[images]))
        for name, parents in self.class_parents.items():
            own = np.asarray(self.catalogue.levels[name], dtype=object)[images]
            yield f"{part}_accuracy/{name}", level_accuracy(predicted, own, parents)

    def run(self, state: Any, final: bool) -> Iterator[tuple[str, float]]:
        results = dict(self.scores(state, self.split.test, "test"))
        if len(self.split.validation):
            results.update(self.scores(state, self.split.validation, "validation"))
        yield "accuracy", results["validation_accuracy" if len(self.split.validation) else "test_accuracy"]
        yield from results.items()
        if final:
            yield from self.scores(state, self.split.train, "train")
