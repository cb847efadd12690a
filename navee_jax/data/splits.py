"""Class-disjoint split: base (train) classes vs held-out classes, the latter cut into support / query."""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Split:
    """Index arrays into a catalogue. train, support, query and unused partition all images."""

    train: np.ndarray
    support: np.ndarray
    query: np.ndarray
    unused: np.ndarray  # held-out images of classes too small to evaluate (reported, not dropped)
    heldout_classes: tuple[str, ...]

    def to_json(self, catalogue: Catalogue) -> dict:
        def refs(idx: np.ndarray) -> list[str]:
            return [catalogue.ref(int(i)) for i in idx]

        return {
            "catalogue": catalogue.name,
            "heldout_classes": list(self.heldout_classes),
            "train_classes": sorted({catalogue.class_names[i] for i in catalogue.labels[self.train]}),
            "counts": {k: int(len(getattr(self, k))) for k in ("train", "support", "query", "unused")},
            "train": refs(self.train),
            "support": refs(self.support),
            "query": refs(self.query),
            "unused": refs(self.unused),
        }


def _check_partition(split: Split, n: int) -> None:
    parts = np.concatenate([split.train, split.support, split.query, split.unused])
    if len(parts) != n or len(np.unique(parts)) != n:
        raise AssertionError("split is not a partition of the catalogue")


def make_split(catalogue: Catalogue, cfg: ml_collections.ConfigDict, seed: int) -> Split:
    """Held-out classes by name (`cfg.heldout_classes`) or `cfg.num_heldout_classes` drawn by seed."""
    rng = np.random.default_rng([seed, 1])
    names = catalogue.class_names
    if cfg.heldout_classes:
        missing = [c for c in cfg.heldout_classes if c not in names]
        if missing:
            raise UserError(f"split.heldout_classes: {missing} not in the catalogue's classes {list(names)[:20]}")
        heldout = tuple(cfg.heldout_classes)
    else:
        k = cfg.num_heldout_classes
        if not 0 < k < len(names):
            raise UserError(f"split.num_heldout_classes={k}: must be between 1 and {len(names) - 1} "
                            f"(catalogue has {len(names)} classes)")
        heldout = tuple(sorted(rng.choice(np.array(names), size=k, replace=False).tolist()))
    heldout_ids = set(catalogue.class_indices(heldout).tolist())
    train = np.flatnonzero([lab not in heldout_ids for lab in catalogue.labels])
    support, query, unused = [], [], []
    for c in sorted(heldout_ids):
        members = rng.permutation(np.flatnonzero(catalogue.labels == c))
        if len(members) < max(2, cfg.min_images_per_class):
            unused.append(members)
            continue
        n_support = int(np.clip(round(cfg.support_fraction * len(members)), 1, len(members) - 1))
        support.append(members[:n_support])
        query.append(members[n_support:])
    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    split = Split(train=train, support=join(support), query=join(query), unused=join(unused),
                  heldout_classes=heldout)
    _check_partition(split, len(catalogue))
    if len(split.support) == 0:
        raise UserError(f"split: no held-out class has >= {max(2, cfg.min_images_per_class)} images; "
                        f"nothing to evaluate")
    if len(np.unique(catalogue.labels[split.train])) < 2:
        raise UserError("split: fewer than 2 training classes remain; hold out fewer classes")
    return split


def write_split(split: Split, catalogue: Catalogue, path: str) -> None:
    with open(path, "w") as f:
        json.dump(split.to_json(catalogue), f, indent=1)
