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


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion Product Images not found at {FASHION}")
def test_fashion_catalogue_accounts_for_every_image_by_article_type():
    cat = styles_catalogue(FASHION, label_column="articleType", group_column="masterCategory")
    # Independent count: csv module on the 9-column copy, and the images present on disk.
    with open(os.path.join(FASHION, "styles.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    on_disk = {n[:-4] for n in os.listdir(os.path.join(FASHION, "images")) if n.endswith(".jpg")}
    want = Counter(r["articleType"] for r in rows if r["id"] in on_disk)
    assert sum(want.values()) == len(on_disk) == 9583
    # Labelled images plus exact duplicates (skipped, each naming the copy that was kept) are all of them.
    got = Counter(cat.class_names[i] for i in cat.labels)
    dup_paths = [s.path for s in cat.skipped if s.reason.startswith("duplicate")]
    label_of = {r["id"]: r["articleType"] for r in rows}
    got.update(label_of[os.path.basename(p)[:-4]] for p in dup_paths)
    assert got == want
    missing = [s for s in cat.skipped if s.reason.startswith("missing image")]
    assert len(missing) == len(rows) - len(on_disk)
    assert set(cat.groups) <= {r["masterCategory"] for r in rows}


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT), reason=f"Omniglot not found at {OMNIGLOT}")
def test_omniglot_group_split_keeps_every_character_and_image_on_one_side():
    import hashlib

    from configs import common
    from navee_jax.data.splits import make_split

    cat = folder_catalogue(OMNIGLOT, group_level=1)
    cfg = common.get_config().split
    cfg.update({"mode": "groups", "heldout_classes": (), "heldout_groups": ("Greek", "Korean")})
    split = make_split(cat, cfg, seed=0)
    test = np.concatenate([split.support, split.query])
    assert not set(cat.labels[split.train]) & set(cat.labels[test])
    assert {cat.groups[i] for i in test} == {"Greek", "Korean"}
    assert len(set(cat.labels[test])) == 24 + 40

    def digests(idx):
        return {hashlib.sha1(open(cat.paths[i], "rb").read()).hexdigest() for i in idx}

    assert not digests(split.train) & digests(test)
