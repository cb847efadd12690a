"""Splits of a catalogue into the images that train and those that evaluate.

Few-shot modes ('classes', 'groups', 'partial') are class-disjoint: base (train) classes vs held-out classes,
the latter cut into support / query. Classification ('stratified') divides every class's images instead.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.errors import UserError


# The parts of a split, which partition the catalogue.
PARTS = ("train", "support", "query", "unused", "excluded_duplicates", "untrained")


@dataclasses.dataclass(frozen=True)
class Split:
    """Index arrays into a catalogue, one per part of `PARTS`; together they hold every image once."""

    train: np.ndarray
    support: np.ndarray
    query: np.ndarray
    unused: np.ndarray  # held-out images of classes too small to evaluate (reported, not dropped)
    # held-out exact copies of an image that is in training or in another held-out class (see make_split)
    excluded_duplicates: np.ndarray
    heldout_classes: tuple[str, ...]
    # split.mode='stratified': the classes of a single image, which train but have no test image
    untested_classes: tuple[str, ...] = ()
    # images of the training classes outside split.train_groups (training on one group only: the study's figure 30)
    untrained: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    # split.mode='stratified' has no held-out classes: its evaluation images are of the training classes, the
    # validation part (choosing checkpoints and k) in `support` and the test part in `query`.
    @property
    def validation(self) -> np.ndarray:
        return self.support

    @property
    def test(self) -> np.ndarray:
        return self.query

    def to_json(self, catalogue: Catalogue) -> dict:
        def refs(idx: np.ndarray) -> list[str]:
            return [catalogue.ref(int(i)) for i in idx]

        return {
            "catalogue": catalogue.name,
            "heldout_classes": list(self.heldout_classes),
            "train_classes": sorted({catalogue.class_names[i] for i in catalogue.labels[self.train]}),
            **({"untested_classes": list(self.untested_classes)} if self.untested_classes else {}),
            "class_names": list(catalogue.class_names),  # in label order: a classifier's outputs
            "counts": {k: int(len(getattr(self, k))) for k in PARTS},
            **{k: refs(getattr(self, k)) for k in PARTS},
        }

    def duplicates_summary(self, catalogue: Catalogue) -> str | None:
        """One line on the exact duplicates kept (data.duplicates='keep') and those left out of evaluation."""
        if catalogue.content_ids is None:
            return None
        sets = catalogue.duplicate_sets()
        return (f"kept {sum(len(s) - 1 for s in sets)} exact duplicate images ({len(sets)} sets); "
                f"{len(self.excluded_duplicates)} copies excluded from evaluation so that no image is on two sides")


def _check_partition(split: Split, n: int) -> None:
    parts = np.concatenate([getattr(split, k) for k in PARTS])
    if len(parts) != n or len(np.unique(parts)) != n:
        raise AssertionError("split is not a partition of the catalogue")


# Held-out evaluation trains on at least 2 classes (a metric needs negatives) and holds out at least 1.
MIN_CLASSES = 3


def _pick(what: str, names: list[str], chosen: tuple[str, ...], count: int, rng: np.random.Generator,
          among: str = "the catalogue") -> list[str]:
    """`chosen` by name, or else `count` of `names` drawn by `rng` (at least one must stay out); `among`
    names where `names` come from, in messages."""
    if chosen:
        missing = [c for c in chosen if c not in names]
        if missing:
            raise UserError(f"split.heldout_{what}: {missing} not among the catalogue's {what} {names[:20]}")
        return list(chosen)
    if len(names) < 2:  # else the range below reads "between 1 and 0"
        one = {"classes": "class", "groups": "group"}[what] if len(names) == 1 else what
        raise UserError(f"split.num_heldout_{what}={count}: {among} has only {len(names)} {one} {names}; "
                        f"drawing held-out {what} needs at least 2 (one held out, one that trains)")
    if not 0 < count < len(names):
        raise UserError(f"split.num_heldout_{what}={count}: must be between 1 and {len(names) - 1} "
                        f"(there are {len(names)} {what})")
    return sorted(rng.choice(np.array(names), size=count, replace=False).tolist())


def _classes_of_groups(catalogue: Catalogue, groups: list[str]) -> list[str]:
    members = {catalogue.class_names[lab] for lab, g in zip(catalogue.labels, catalogue.groups) if g in groups}
    return sorted(members)


def heldout_classes(catalogue: Catalogue, cfg: ml_collections.ConfigDict, rng: np.random.Generator) -> tuple[str, ...]:
    """The classes never seen in training, by `cfg.mode`:
    - "classes": `heldout_classes` by name, or `num_heldout_classes` drawn at random;
    - "groups": every class of `heldout_groups` (or `num_heldout_groups` drawn), e.g. a whole unseen brand;
    - "partial": `num_heldout_classes` classes drawn from `partial_group`, whose other classes train.
    """
    names = list(catalogue.class_names)
    if len(names) < MIN_CLASSES:
        where = f"data.root {catalogue.root!r}" if catalogue.root else f"the catalogue {catalogue.name!r}"
        raise UserError(f"split: {where} has only {len(names)} class{'' if len(names) == 1 else 'es'} "
                        f"{names[:5]}; held-out evaluation needs at least {MIN_CLASSES} (2 to train on, 1 held "
                        f"out): add classes")
    if cfg.mode == "classes":
        return tuple(_pick("classes", names, tuple(cfg.heldout_classes), cfg.num_heldout_classes, rng))
    if cfg.mode not in ("groups", "partial"):
        raise UserError(f"split.mode: unknown mode {cfg.mode!r}; use 'classes', 'groups', 'partial' or "
                        f"'stratified'")
    if catalogue.groups is None:
        raise UserError(f"split.mode={cfg.mode!r} needs groups, but source {catalogue.name!r} has none; "
                        f"set data.group_level (folders) or data.group_column (styles.csv)")
    groups = sorted(set(catalogue.groups))
    if cfg.mode == "groups":
        return tuple(_classes_of_groups(catalogue, _pick("groups", groups, tuple(cfg.heldout_groups),
                                                         cfg.num_heldout_groups, rng)))
    if cfg.partial_group not in groups:
        raise UserError(f"split.partial_group: {cfg.partial_group!r} is not a group of the catalogue {groups[:20]}")
    in_group = _classes_of_groups(catalogue, [cfg.partial_group])
    return tuple(_pick("classes", in_group, (), cfg.num_heldout_classes, rng,
                       among=f"split.partial_group {cfg.partial_group!r}"))


def _excluded_duplicates(catalogue: Catalogue, heldout: np.ndarray) -> np.ndarray:
    """Held-out images (mask `heldout`) left out of evaluation by rules (a) and (b) of `make_split`."""
    if catalogue.content_ids is None:
        return np.zeros(0, np.int64)
    ids, labels = catalogue.content_ids.tolist(), catalogue.labels.tolist()
    trained = {ids[i] for i in np.flatnonzero(~heldout).tolist()}
    class_of: dict[int, int] = {}  # content -> the held-out class of its first (lowest-index) copy
    excluded = [i for i in np.flatnonzero(heldout).tolist()
                if ids[i] in trained or class_of.setdefault(ids[i], labels[i]) != labels[i]]
    return np.array(excluded, dtype=np.int64)


def _in_train_groups(catalogue: Catalogue, candidates: np.ndarray, train_groups: tuple[str, ...]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, untrained): the `candidates` of `train_groups` and the others; all train when it is ()."""
    if not train_groups:
        return candidates, np.zeros(0, np.int64)
    if catalogue.groups is None:
        raise UserError(f"split.train_groups={train_groups} needs groups, but source {catalogue.name!r} has none; "
                        f"set data.group_column (or data.group_level), or ()")
    groups = np.asarray(catalogue.groups)
    known = sorted(set(groups[candidates].tolist()))
    missing = [g for g in train_groups if g not in known]
    if missing:
        raise UserError(f"split.train_groups: {missing} not among the groups that can train {known[:20]}")
    keep = np.isin(groups[candidates], train_groups)
    return candidates[keep], candidates[~keep]


def make_split(catalogue: Catalogue, cfg: ml_collections.ConfigDict, seed: int) -> Split:
    """Held-out classes (see `heldout_classes`), each cut into support and query; the rest trains.

    With exact duplicates kept (`catalogue.content_ids`), no content is on two sides (train / support /
    query): (a) held-out images whose content is also among the training images go to
    `excluded_duplicates`; (b) of the remaining held-out images, a content found in several held-out
    classes stays only in the class of its first copy (lowest index), the other copies go to
    `excluded_duplicates` too; (c) within a held-out class, support and query take whole content groups,
    so all copies of an image fall on one side: support takes shuffled groups until it holds the wanted
    number of images (`support_count` or `support_fraction`, counted in images, as `min_images_per_class`
    is), leaving at least one group for query. A class of a single content group is unused. Without
    duplicates every group is one image, and the split is the one of a catalogue without content ids.

    With `train_groups`, only the images of those groups train; the rest of the training classes' images are
    `untrained` (counted and listed in splits.json).
    """
    if cfg.mode == "stratified":
        return stratified_split(catalogue, cfg, seed)
    rng = np.random.default_rng([seed, 1])
    heldout = heldout_classes(catalogue, cfg, rng)
    heldout_ids = catalogue.class_indices(heldout)
    is_heldout = np.isin(catalogue.labels, heldout_ids)
    train, untrained = _in_train_groups(catalogue, np.flatnonzero(~is_heldout), tuple(cfg.get("train_groups", ())))
    excluded = _excluded_duplicates(catalogue, is_heldout)
    evaluable = is_heldout.copy()
    evaluable[excluded] = False
    ids = catalogue.content_ids if catalogue.content_ids is not None else np.arange(len(catalogue))
    support, query, unused = [], [], []
    for c in sorted(set(heldout_ids.tolist())):
        members = np.flatnonzero(evaluable & (catalogue.labels == c))
        groups: dict[int, list[int]] = {}  # content -> its copies in this class, in order of first copy
        for i in members.tolist():
            groups.setdefault(int(ids[i]), []).append(i)
        by_first = {g[0]: g for g in groups.values()}
        # Shuffling the first copies draws exactly what shuffling `members` did before content ids.
        shuffled = [by_first[i] for i in rng.permutation(np.array(list(by_first), dtype=members.dtype)).tolist()]
        if len(members) < max(2, cfg.min_images_per_class) or len(shuffled) < 2:
            unused.append(members)
            continue
        wanted = cfg.support_count or round(cfg.support_fraction * len(members))
        n_support = int(np.clip(wanted, 1, len(members) - 1))  # at least one support and one query image
        filled = np.cumsum([len(g) for g in shuffled])
        n_groups = int(np.clip(np.searchsorted(filled, n_support) + 1, 1, len(shuffled) - 1))
        support.append(np.concatenate(shuffled[:n_groups]))
        query.append(np.concatenate(shuffled[n_groups:]))

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    split = Split(train=train, support=join(support), query=join(query), unused=join(unused),
                  excluded_duplicates=excluded, heldout_classes=heldout, untrained=untrained)
    _check_partition(split, len(catalogue))
    if len(split.support) == 0:
        raise UserError(f"split: no held-out class has >= {max(2, cfg.min_images_per_class)} images; "
                        f"nothing to evaluate")
    if len(np.unique(catalogue.labels[split.train])) < 2:
        raise UserError("split: fewer than 2 training classes remain; hold out fewer classes")
    return split


def split_seed(config: ml_collections.ConfigDict) -> int:
    """`split.seed`, or the run's `seed` when it is -1: seeds that differ only in training (an ensemble's
    members) keep one split by setting it."""
    return config.seed if config.split.seed < 0 else config.split.seed


def _stratified_counts(n: int, test_fraction: float, validation_fraction: float) -> tuple[int, int]:
    """(test, validation) images of a class of `n`: at least one test image and one training image when
    n >= 2; validation only from what is left beyond that."""
    if n < 2:
        return 0, 0
    test = int(np.clip(round(test_fraction * n), 1, n - 1))
    validation = int(np.clip(round(validation_fraction * n), 0, n - test - 1))
    return test, validation


def stratified_split(catalogue: Catalogue, cfg: ml_collections.ConfigDict, seed: int) -> Split:
    """Classification: each class's images shuffled by the seed and cut into test (`cfg.test_fraction` of
    them, at least one), validation (`cfg.validation_fraction`, from classes with images to spare) and
    train (the rest, at least one). A class of a single image only trains and is listed in
    `untested_classes`; nothing is dropped."""
    if catalogue.content_ids is not None:
        raise UserError("split.mode='stratified' with data.duplicates='keep' could put copies of one image on "
                        "both sides; use data.duplicates='skip'")
    if len(catalogue.class_names) < 2:
        raise UserError(f"split.mode='stratified': the catalogue has {len(catalogue.class_names)} class; a "
                        f"classifier needs at least 2")
    rng = np.random.default_rng([seed, 8])
    train, validation, test, untested = [], [], [], []
    for c, name in enumerate(catalogue.class_names):
        members = rng.permutation(np.flatnonzero(catalogue.labels == c))
        n_test, n_val = _stratified_counts(len(members), cfg.test_fraction, cfg.validation_fraction)
        if n_test == 0:
            untested.append(name)
        test.append(members[:n_test])
        validation.append(members[n_test:n_test + n_val])
        train.append(members[n_test + n_val:])
    empty = np.zeros(0, np.int64)
    split = Split(train=np.sort(np.concatenate(train)), support=np.sort(np.concatenate(validation)),
                  query=np.sort(np.concatenate(test)), unused=empty, excluded_duplicates=empty, heldout_classes=(),
                  untested_classes=tuple(untested))
    _check_partition(split, len(catalogue))
    return split


def write_split(split: Split, catalogue: Catalogue, path: str, must_match_existing: bool = False) -> None:
    """Writes `path`; with `must_match_existing` (a resumed run), an existing file must describe the very
    same split, or the data changed since the run started and it stops rather than train on another."""
    now = split.to_json(catalogue)
    if must_match_existing and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        # A file written before excluded_duplicates existed lacks it: it had none.
        changed = [k for k in PARTS if saved.get(k, [] if k == "excluded_duplicates" else None) != now[k]]
        if changed:
            raise UserError(f"{path}: the {changed[0]} images differ from the catalogue now on disk "
                            f"({saved['counts']} then, {now['counts']} now); the data changed since this run "
                            f"started: restore it or use a fresh --workdir")
    with open(path, "w") as f:
        json.dump(now, f, indent=1)
