"""Accuracy of a classifier on the validation and test parts of a stratified split, at the label column and
at each coarser level (`data.label_levels`)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.splits import Split
from navee_jax.embed import EmbedFn, embed_in_batches
from navee_jax.errors import UserError


def parent_of_class(labels: np.ndarray, parents: Sequence[str], num_classes: int) -> list[str]:
    """Per class, the coarser label most of its images carry (ties: the first in sorted order); how a class
    prediction reads at a coarser level where the columns do not nest exactly. A class with no image: ''."""
    counts: list[Counter] = [Counter() for _ in range(num_classes)]
    for lab, parent in zip(labels.tolist(), parents):
        counts[lab][parent] += 1
    return [min(c, key=lambda p: (-c[p], p)) if c else "" for c in counts]


class LevelScorer:
    """Accuracy of predicted classes at the label column ("class") and at each coarser level of
    `catalogue.levels`, a predicted class read as the level most of its training images (`train`) carry."""

    def __init__(self, catalogue: Catalogue, train: np.ndarray):
        self.catalogue = catalogue
        n = len(catalogue.class_names)
        self.levels = {name: np.asarray(values, dtype=object) for name, values in (catalogue.levels or {}).items()}
        self.parents = {name: np.asarray(parent_of_class(catalogue.labels[train], values[train], n), dtype=object)
                        for name, values in self.levels.items()}

    def __call__(self, predicted: np.ndarray, images: np.ndarray) -> dict[str, float]:
        out = {"class": float(np.mean(predicted == self.catalogue.labels[images]))}
        for name, values in self.levels.items():
            out[name] = float(np.mean(self.parents[name][predicted] == values[images]))
        return out


class ClassificationEvaluator:
    """Yields ("accuracy", validation accuracy: it picks the best checkpoint; the test accuracy when the
    split has no validation part), ("test_accuracy", ...), ("test_accuracy/<level>", ...) for each
    `data.label_levels` column, and when `final` the same on the training images (un-augmented)."""

    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict, logits_fn: EmbedFn,
                 mesh: Mesh):
        self.catalogue, self.split, self.config, self.logits_fn, self.mesh = catalogue, split, config, logits_fn, mesh
        self.score = LevelScorer(catalogue, split.train)

    def predict(self, state: Any, images: np.ndarray) -> np.ndarray:
        """(n,) predicted classes of the catalogue images `images` (un-augmented)."""
        bs = self.config.eval.batch_size
        logits = embed_in_batches(self.logits_fn, state, eval_batches(self.catalogue, images, self.config.data, bs),
                                  bs, self.mesh)
        if not np.isfinite(logits).all():
            raise UserError("classifier logits contain NaN/inf: the model diverged; lower --config.optim.lr")
        return logits.argmax(axis=1)

    def scores(self, state: Any, images: np.ndarray, part: str) -> Iterator[tuple[str, float]]:
        for level, accuracy in self.score(self.predict(state, images), images).items():
            yield f"{part}_accuracy" + ("" if level == "class" else f"/{level}"), accuracy

    def run(self, state: Any, final: bool) -> Iterator[tuple[str, float]]:
        results = dict(self.scores(state, self.split.test, "test"))
        if len(self.split.validation):
            results.update(self.scores(state, self.split.validation, "validation"))
        yield "accuracy", results["validation_accuracy" if len(self.split.validation) else "test_accuracy"]
        yield from results.items()
        if final:
            yield from self.scores(state, self.split.train, "train")
