"""The standard Omniglot protocol's rotated classes (Vinyals et al. 2016, Snell et al. 2017, Finn et al. 2017):
each training character rotated by 90, 180 and 270 degrees becomes a class of its own.

Made after the split, from the training classes only: a held-out character's rotations are never made, so no
character (in any rotation) can be on both sides. The rotated images are the same files (or pixels), turned
at decode time by `Catalogue.quarter_turns` (navee_jax.data.pipeline), so nothing is written to disk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.splits import Split
from navee_jax.errors import UserError

ANGLES = (90, 180, 270)


def rotated_class_name(name: str, degrees: int) -> str:
    return f"{name} (rotated {degrees})"


def with_rotated_classes(catalogue: Catalogue, split: Split, degrees: tuple[int, ...]) -> tuple[Catalogue, Split]:
    """(catalogue, split) with one new training class per training class and angle in `degrees` (counter-
    clockwise): the class's training images, turned. `degrees=()` returns both unchanged."""
    if not degrees:
        return catalogue, split
    bad = [d for d in degrees if d not in ANGLES]
    if bad or len(set(degrees)) != len(degrees):
        raise UserError(f"data.rotated_classes={tuple(degrees)}: use distinct angles from {ANGLES}")
    if catalogue.quarter_turns is not None and np.any(catalogue.quarter_turns):
        raise UserError("data.rotated_classes: the catalogue already holds rotated classes")
    train = np.sort(split.train)
    train_classes = np.unique(catalogue.labels[train])
    n, c = len(catalogue), len(catalogue.class_names)
    new_label = np.full(c, -1, np.int64)  # catalogue label -> its position among the training classes
    new_label[train_classes] = np.arange(len(train_classes))
    labels, names, turns, sources = [catalogue.labels], list(catalogue.class_names), [np.zeros(n, np.int64)], []
    for r, d in enumerate(degrees):
        labels.append(c + r * len(train_classes) + new_label[catalogue.labels[train]])
        names += [rotated_class_name(catalogue.class_names[k], d) for k in train_classes]
        turns.append(np.full(len(train), d // 90, np.int64))
        sources.append(train)
    copies = np.concatenate(sources)
    every = np.concatenate([np.arange(n), copies])

    def per_image(values):
        return None if values is None else tuple(values[i] for i in every)

    ids = catalogue.content_ids
    if ids is not None:  # a rotated copy is new content: it is no duplicate of its upright image
        offsets = np.repeat(np.arange(1, len(degrees) + 1), len(train)) * (int(ids.max()) + 1)
        ids = np.concatenate([ids, ids[copies] + offsets])
    rotated = dataclasses.replace(
        catalogue, labels=np.concatenate(labels), class_names=tuple(names),
        paths=per_image(catalogue.paths), pixels=None if catalogue.pixels is None else catalogue.pixels[every],
        groups=per_image(catalogue.groups), transparent=per_image(catalogue.transparent),
        digests=per_image(catalogue.digests), content_ids=ids, quarter_turns=np.concatenate(turns),
        levels=None if catalogue.levels is None else {k: per_image(v) for k, v in catalogue.levels.items()})
    return rotated, dataclasses.replace(split, train=np.concatenate([split.train, np.arange(n, len(every))]))
