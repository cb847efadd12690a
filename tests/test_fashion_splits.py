"""The fashion test sets on a styles.csv the test writes: a composite label (articleType+baseColour) and the
`groups` (a whole masterCategory unseen) and `partial` (classes of a group that trains) splits, checked against
the csv module's reading of the same rows. Tiny 12x12 images: fast."""

import csv
import io
import os

import numpy as np
import pytest

from configs import common
from conftest import write_image
from navee_jax.data.sources import styles_catalogue
from navee_jax.data.splits import make_split
from navee_jax.errors import UserError

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage"
TYPES = {"Apparel": ("Shirts", "Jeans", "Tshirts"), "Footwear": ("Heels", "Flats"), "Accessories": ("Belts", "Bags")}
COLOURS = ("Black", "Navy Blue", "White")


def _rows() -> list[str]:
    rows, i = [], 0
    for master, types in TYPES.items():
        for t in types:
            for c in COLOURS:
                for _ in range(3):  # three photos of every type and colour
                    i += 1
                    rows.append(f"{i},Men,{master},Sub,{t},{c},Fall,2012,Casual")
    i += 1
    rows.append(f"{i},Men,Apparel,Topwear,Shirts,,Fall,2012,Casual")  # no colour: skipped, listed
    return rows


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    (root / "images").mkdir()
    rows = _rows()
    (root / "styles.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    for row in rows:
        write_image(str(root / "images" / f"{row.split(',')[0]}.jpg"), seed=int(row.split(",")[0]), size=12)
    return root


def _reference(root) -> dict[str, tuple[str, str]]:
    """id -> (articleType+baseColour, masterCategory) by the csv module, rows with an empty column left out."""
    rows = csv.DictReader(io.StringIO((root / "styles.csv").read_text()))
    return {r["id"]: (f"{r['articleType']}+{r['baseColour']}", r["masterCategory"])
            for r in rows if r["articleType"] and r["baseColour"]}


def _split_cfg(**overrides):
    cfg = common.get_config("digits").split
    cfg.heldout_classes = ()
    cfg.update(overrides)
    return cfg


def test_composite_label_names_one_class_per_type_and_colour(root):
    cat = styles_catalogue(str(root), label_column="articleType+baseColour", group_column="masterCategory")
    want = _reference(root)
    got = {os.path.basename(p)[:-4]: (cat.class_names[c], g) for p, c, g in zip(cat.paths, cat.labels, cat.groups)}
    assert got == want
    assert len(cat.class_names) == 7 * len(COLOURS) and "Shirts+Navy Blue" in cat.class_names
    assert [(os.path.basename(s.path), s.reason) for s in cat.skipped] == [(f"{len(_rows())}.jpg", "empty baseColour")]
    with pytest.raises(UserError, match="data.label_column: column 'colour'"):
        styles_catalogue(str(root), label_column="articleType+colour")


def _sides(cat, split) -> list[set[str]]:
    return [{cat.paths[i] for i in part} for part in (split.train, split.support, split.query, split.unused)]


@pytest.mark.parametrize("label", ["articleType", "articleType+baseColour"])
def test_groups_split_holds_out_a_whole_master_category(root, label):
    cat = styles_catalogue(str(root), label_column=label, group_column="masterCategory")
    split = make_split(cat, _split_cfg(mode="groups", heldout_groups=("Accessories",), num_heldout_groups=0), 0)
    sides = _sides(cat, split)
    assert sum(map(len, sides)) == len(cat.paths) == len(set().union(*sides))  # a partition of the images
    groups = np.array(cat.groups)
    assert set(groups[split.train]) == {"Apparel", "Footwear"}
    heldout = np.concatenate([split.support, split.query])
    assert set(groups[heldout]) == {"Accessories"}
    names = {c for c, m in _reference(root).values() if m == "Accessories"}
    assert set(split.heldout_classes) == {n if "+" in label else n.split("+")[0] for n in names}


@pytest.mark.parametrize("label", ["articleType", "articleType+baseColour"])
def test_partial_split_holds_out_classes_of_a_group_that_trains(root, label):
    cat = styles_catalogue(str(root), label_column=label, group_column="masterCategory")
    split = make_split(cat, _split_cfg(mode="partial", partial_group="Apparel", num_heldout_classes=2), seed=3)
    sides = _sides(cat, split)
    assert sum(map(len, sides)) == len(cat.paths) == len(set().union(*sides))
    names = np.array(cat.class_names)
    held = set(split.heldout_classes)
    assert len(held) == 2 and not held & set(names[cat.labels[split.train]])
    groups = np.array(cat.groups)
    heldout = np.concatenate([split.support, split.query])
    assert set(groups[heldout]) == {"Apparel"} and set(names[cat.labels[heldout]]) == held
    assert {"Apparel", "Footwear", "Accessories"} == set(groups[split.train])  # the group still trains
    apparel = {c if "+" in label else c.split("+")[0] for c, m in _reference(root).values() if m == "Apparel"}
    assert held <= apparel
    other = make_split(cat, _split_cfg(mode="partial", partial_group="Apparel", num_heldout_classes=2), seed=3)
    assert other.heldout_classes == split.heldout_classes  # seeded


def test_train_groups_trains_one_group_only(root):
    """split.train_groups (the study's figure 30): only Footwear trains; Apparel's images are untrained, listed,
    and the held-out set is the one of the split that trains on every group."""
    cat = styles_catalogue(str(root), label_column="articleType", group_column="masterCategory")
    every = make_split(cat, _split_cfg(mode="groups", heldout_groups=("Accessories",), num_heldout_groups=0), 0)
    one = make_split(cat, _split_cfg(mode="groups", heldout_groups=("Accessories",), num_heldout_groups=0,
                                     train_groups=("Footwear",)), 0)
    groups = np.array(cat.groups)
    assert set(groups[one.train]) == {"Footwear"} and set(groups[one.untrained]) == {"Apparel"}
    np.testing.assert_array_equal(np.sort(np.concatenate([one.train, one.untrained])), every.train)
    np.testing.assert_array_equal(one.support, every.support)
    np.testing.assert_array_equal(one.query, every.query)
    sides = [*_sides(cat, one), {cat.paths[i] for i in one.untrained}]
    assert sum(map(len, sides)) == len(cat.paths) == len(set().union(*sides))
    listed = one.to_json(cat)
    rows = csv.DictReader(io.StringIO((root / "styles.csv").read_text()))
    apparel = sum(r["masterCategory"] == "Apparel" for r in rows)
    assert listed["counts"]["untrained"] == len(listed["untrained"]) == apparel
    with pytest.raises(UserError, match=r"split.train_groups: \['Accessories'\] not among the groups that can train"):
        make_split(cat, _split_cfg(mode="groups", heldout_groups=("Accessories",), num_heldout_groups=0,
                                   train_groups=("Accessories",)), 0)
