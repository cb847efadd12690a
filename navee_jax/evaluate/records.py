"""Typed few-shot results: one `FewShotCell` per (N ways, K shots, classifier) setting.

A cell is either evaluated (mean episode accuracy, its 95% half-width, the episodes and queries per class
it used) or skipped (why). Its dict form, what report.json, metrics.json, figures.py and report.py hold, is
flat:

    {"ways": 5, "shots": 1, "classifier": "1nn", "mean": 0.80, "ci95": 0.01, "episodes": 600,
     "queries_per_class": 15, **details}                                evaluated
    {"ways": 20, "shots": 5, "classifier": "1nn", "mean": None, "ci95": None, "episodes": 600,
     "queries_per_class": None, "skipped": "why"}                       not possible on this data

`details` are classifier-specific extras (the MLP's validation_queries, selected and validation_accuracy;
a fine-tuning classifier's inner_steps), written beside the fixed keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

_FIXED = ("ways", "shots", "classifier", "mean", "ci95", "episodes", "queries_per_class")


@dataclasses.dataclass(frozen=True)
class FewShotCell:
    """One few-shot setting's result. `mean` and `ci95` are None when skipped (`skipped` says why)."""

    ways: int
    shots: int
    classifier: str
    mean: float | None
    ci95: float | None
    episodes: int
    queries_per_class: int | None = None
    skipped: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        clash = sorted(set(self.details) & {*_FIXED, "skipped"})
        if clash:  # the dict form is flat: a detail must not overwrite a field
            raise ValueError(f"FewShotCell details {clash} clash with the cell's own fields")

    @property
    def name(self) -> str:
        """'5-way 1-shot'."""
        return f"{self.ways}-way {self.shots}-shot"

    def to_dict(self) -> dict[str, Any]:
        """The flat dict form (module docstring)."""
        out = {k: getattr(self, k) for k in _FIXED}
        out.update(self.details)
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FewShotCell:
        """The inverse of `to_dict`: keys other than the fields go to `details`."""
        return cls(ways=int(d["ways"]), shots=int(d["shots"]), classifier=str(d["classifier"]), mean=d.get("mean"),
                   ci95=d.get("ci95"), episodes=int(d["episodes"]), queries_per_class=d.get("queries_per_class"),
                   skipped=d.get("skipped"), details={k: v for k, v in d.items() if k not in {*_FIXED, "skipped"}})

    @classmethod
    def from_accuracies(cls, ways: int, shots: int, classifier: str, accuracies: np.ndarray,
                        queries_per_class: int | None, **details: Any) -> FewShotCell:
        """A cell from its per-episode accuracies (E,): the mean over episodes and the 95% half-width
        1.96 * std(ddof=1) / sqrt(E), NaN for a single episode."""
        acc = np.asarray(accuracies)
        ci = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else float("nan")
        return cls(ways=int(ways), shots=int(shots), classifier=classifier, mean=float(acc.mean()), ci95=float(ci),
                   episodes=len(acc), queries_per_class=None if queries_per_class is None else int(queries_per_class),
                   details=details)

    @classmethod
    def skip(cls, ways: int, shots: int, classifier: str, episodes: int, why: str) -> FewShotCell:
        """A setting that cannot be evaluated on this data, with the reason."""
        return cls(ways=int(ways), shots=int(shots), classifier=classifier, mean=None, ci95=None,
                   episodes=int(episodes), skipped=why)


def grid_average(cells: Sequence[Mapping[str, Any]]) -> dict[str, float | int] | None:
    """The mean accuracy over the evaluated cells of an N x K grid (the study's one-number summary of a
    heatmap) and its 95% half-width, sqrt(sum of the cells' squared half-widths) / cells, as the cells' episodes
    are drawn independently; None when no cell was evaluated."""
    done = [c for c in cells if c.get("mean") is not None]
    if not done:
        return None
    ci = float(np.sqrt(sum(float(c["ci95"]) ** 2 for c in done)) / len(done))
    return {"mean": float(np.mean([c["mean"] for c in done])), "ci95": ci, "cells": len(done)}
