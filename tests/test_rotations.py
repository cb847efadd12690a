"""Omniglot's rotated classes (navee_jax.data.rotations): made from training classes only, so no character in
any rotation is on both sides of a split, and decoded as the upright image turned by np.rot90."""

import os

import ml_collections
import numpy as np
import pytest

from configs import common
from conftest import OMNIGLOT
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.rotations import rotated_class_name, with_rotated_classes
from navee_jax.data.sources import digits_catalogue, folder_catalogue
from navee_jax.data.splits import PARTS, make_split
from navee_jax.errors import UserError

SMALL1 = os.path.join(OMNIGLOT, "images_background_small1")


def _base(name: str) -> str:
    return name.split(" (rotated ")[0]


def _check_disjoint(catalogue, split, degrees):
    train_names = {catalogue.class_names[k] for k in catalogue.labels[split.train]}
    heldout = {catalogue.class_names[k] for part in ("support", "query", "unused")
               for k in catalogue.labels[getattr(split, part)]}
    assert not {_base(n) for n in train_names} & {_base(n) for n in heldout}  # no character on both sides
    assert all(_base(n) == n for n in heldout)  # held-out characters are never rotated
    upright = {n for n in train_names if _base(n) == n}
    assert train_names == upright | {rotated_class_name(n, d) for n in upright for d in degrees}
    parts = np.concatenate([getattr(split, k) for k in PARTS])
    assert len(parts) == len(catalogue) == len(np.unique(parts))  # still a partition


def test_rotated_copies_are_new_training_classes_decoded_turned():
    cat = digits_catalogue()
    cfg = common.get_config("digits")
    split = make_split(cat, cfg.split, cfg.seed)
    rotated, rsplit = with_rotated_classes(cat, split, (90, 180, 270))
    _check_disjoint(rotated, rsplit, (90, 180, 270))
    n_train = len(split.train)
    assert len(rotated) == len(cat) + 3 * n_train and len(rsplit.train) == 4 * n_train
    assert len(rotated.class_names) == 10 + 3 * 6  # six training digits, three turns each
    for part in ("support", "query"):
        np.testing.assert_array_equal(getattr(rsplit, part), getattr(split, part))
    data = ml_collections.ConfigDict(cfg.data.to_dict())
    data.image_size = 8  # the digits' own size: no resampling, so the turn is exact
    upright = np.concatenate(list(eval_batches(rotated, np.sort(split.train), data, 512)))
    for r, k in enumerate((1, 2, 3)):
        copies = np.arange(len(cat) + r * n_train, len(cat) + (r + 1) * n_train)
        np.testing.assert_array_equal(rotated.labels[copies] >= 10, True)
        turned = np.concatenate(list(eval_batches(rotated, copies, data, 512)))
        np.testing.assert_array_equal(turned, np.rot90(upright, k, axes=(1, 2)))
    assert with_rotated_classes(cat, split, ()) == (cat, split)
    with pytest.raises(UserError, match="data.rotated_classes=\\(45,\\)"):
        with_rotated_classes(cat, split, (45,))


@pytest.mark.skipif(not os.path.isdir(SMALL1),
                    reason=f"Omniglot not found at {SMALL1} (../shared/data is not part of a fresh clone)")
def test_no_omniglot_character_in_any_rotation_is_on_both_sides_of_an_alphabet_split():
    cat = folder_catalogue(SMALL1, group_level=0)
    cfg = common.get_config("digits").split
    cfg.mode, cfg.heldout_classes, cfg.num_heldout_groups = "groups", (), 2
    split = make_split(cat, cfg, seed=0)
    rotated, rsplit = with_rotated_classes(cat, split, (90, 180, 270))
    _check_disjoint(rotated, rsplit, (90, 180, 270))
    train_alphabets = {rotated.groups[i] for i in rsplit.train}
    heldout_alphabets = {rotated.groups[i] for i in np.concatenate([rsplit.support, rsplit.query])}
    assert len(heldout_alphabets) == 2 and not train_alphabets & heldout_alphabets
