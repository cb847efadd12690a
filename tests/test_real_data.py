"""The real data sets in ../shared/data (never copied into the repo); skipped where absent."""

import csv
import os
from collections import Counter

import numpy as np
import pytest

from conftest import OMNIGLOT, SHARED_DATA
from navee_jax.data.sources import folder_catalogue, styles_catalogue

FASHION = os.path.join(SHARED_DATA, "fashion_product_images")


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT), reason=f"Omniglot not found at {OMNIGLOT}")
def test_omniglot_has_242_distinct_characters_of_20_drawings():
    cat = folder_catalogue(OMNIGLOT, group_level=1)  # <set>/<alphabet>/<character>/<drawing>.png
    assert len(cat.class_names) == 242
    assert np.all(np.bincount(cat.labels) == 20)
    # Greek and Latin are in both background sets, byte for byte: the second copy is skipped.
    duplicates = [s for s in cat.skipped if s.reason.startswith("duplicate")]
    assert len(duplicates) == (24 + 26) * 20
    assert {os.path.relpath(s.path, OMNIGLOT).split(os.sep)[1] for s in duplicates} == {"Greek", "Latin"}
    assert len(set(cat.groups)) == 8


def _fashion_rows() -> tuple[list[dict], set[str]]:
    """Independent of the catalogue: the csv module on the 9-column copy, and the ids with an image on disk."""
    with open(os.path.join(FASHION, "styles.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, {n[:-4] for n in os.listdir(os.path.join(FASHION, "images")) if n.endswith(".jpg")}


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion Product Images not found at {FASHION}")
def test_fashion_catalogue_keeps_every_labelled_image_by_article_type():
    rows, on_disk = _fashion_rows()
    want = Counter(r["articleType"] for r in rows if r["id"] in on_disk)
    assert sum(want.values()) == len(on_disk) == 9583
    cat = styles_catalogue(FASHION, label_column="articleType", group_column="masterCategory", duplicates="keep")
    assert len(cat) == 9583 and Counter(cat.class_names[i] for i in cat.labels) == want
    missing = [s for s in cat.skipped if s.reason.startswith("missing image")]
    assert len(missing) == len(cat.skipped) == len(rows) - len(on_disk)
    assert set(cat.groups) <= {r["masterCategory"] for r in rows}
    sets = cat.duplicate_sets()
    assert (len(sets), sum(len(s) - 1 for s in sets)) == (121, 122)
    label_sets = [{cat.class_names[cat.labels[i]] for i in s} for s in sets]
    crossing = [sorted(os.path.basename(cat.paths[i]) for i in s) for s, labels in zip(sets, label_sets)
                if len(labels) > 1]
    assert crossing == [["12345.jpg", "12346.jpg"]]

    # The default skips the later copies, each naming the copy kept: the two counts reconcile.
    skip = styles_catalogue(FASHION, label_column="articleType", group_column="masterCategory")
    dup_paths = [s.path for s in skip.skipped if s.reason.startswith("duplicate")]
    assert len(skip) == 9583 - 122 and len(dup_paths) == 122
    label_of = {r["id"]: r["articleType"] for r in rows}
    got = Counter(skip.class_names[i] for i in skip.labels)
    got.update(label_of[os.path.basename(p)[:-4]] for p in dup_paths)
    assert got == want

    # Splits of the kept catalogue: no photo on two sides. Sarees' only photo is also a T-shirt's:
    # with Tshirts held out and Sarees training, that copy leaves evaluation (rule a); with both held out,
    # it stays with the first copy's class, Sarees, whose one image is unused (rule b).
    from configs import common
    from navee_jax.data.splits import make_split

    cfg = common.get_config("digits").split
    for heldout, excluded in [(("Shirts", "Tshirts", "Kurtas"), 1), (("Sarees", "Shirts", "Tshirts", "Kurtas"), 1)]:
        cfg.heldout_classes = heldout
        split = make_split(cat, cfg, seed=0)
        assert len(split.excluded_duplicates) == excluded
        assert os.path.basename(cat.paths[split.excluded_duplicates[0]]) == "12346.jpg"
        _assert_no_photo_on_two_sides(cat, split)
    cfg.heldout_classes, cfg.num_heldout_classes = (), 12
    _assert_no_photo_on_two_sides(cat, make_split(cat, cfg, seed=0))


def _assert_no_photo_on_two_sides(cat, split):
    import hashlib

    from navee_jax.data.splits import PARTS

    np.testing.assert_array_equal(np.sort(np.concatenate([getattr(split, k) for k in PARTS])), np.arange(len(cat)))

    def digests(idx):
        return {hashlib.sha1(open(cat.paths[i], "rb").read()).hexdigest() for i in idx}

    train, support, query = digests(split.train), digests(split.support), digests(split.query)
    assert not train & support and not train & query and not support & query


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT), reason=f"Omniglot not found at {OMNIGLOT}")
def test_omniglot_group_split_keeps_every_character_and_image_on_one_side():
    import hashlib

    from configs import common
    from navee_jax.data.splits import make_split

    cat = folder_catalogue(OMNIGLOT, group_level=1)
    cfg = common.get_config("digits").split
    cfg.update({"mode": "groups", "heldout_classes": (), "heldout_groups": ("Greek", "Korean")})
    split = make_split(cat, cfg, seed=0)
    test = np.concatenate([split.support, split.query])
    assert not set(cat.labels[split.train]) & set(cat.labels[test])
    assert {cat.groups[i] for i in test} == {"Greek", "Korean"}
    assert len(set(cat.labels[test])) == 24 + 40

    def digests(idx):
        return {hashlib.sha1(open(cat.paths[i], "rb").read()).hexdigest() for i in idx}

    assert not digests(split.train) & digests(test)
