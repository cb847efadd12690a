"""data.duplicates: exact duplicates skipped (default) or kept, and splits that never put copies of one
image on two sides."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from configs import common
from conftest import write_image
from navee_jax.data.describe import describe
from navee_jax.data.sources import digits_catalogue, folder_catalogue, load_catalogue
from navee_jax.data.splits import PARTS, heldout_classes, make_split, write_split
from navee_jax.errors import UserError

# class folder -> files; a file named like "A/bag/0.png" is a byte-identical copy of that file.
TREE = {
    "A/bag": ["0", "1", "2", "B/shirt/1.png"],  # its last image is also a training image (shirt) ...
    "A/hat": ["0", "A/bag/0.png", "2", "3", "A/hat/3.png"],  # ... one is in another held-out class, one in its own
    "B/shirt": ["0", "1", "2", "B/shirt/0.png"],
    "B/shoe": ["0", "1", "2", "3"],
    "B/sock": ["0", "1", "2"],
    "B/twin": ["0", "B/twin/0.png"],  # two copies of one image: cannot give both a support and a query image
}


@pytest.fixture
def dup_tree(tmp_path):
    """TREE on disk, copies made once every original exists."""
    root = tmp_path / "shop"
    copies = []
    for seed, (folder, files) in enumerate(TREE.items()):
        (root / folder).mkdir(parents=True)
        for i, f in enumerate(files):
            if f.endswith(".png"):
                copies.append((root / f, root / folder / f"{i}.png"))
            else:
                write_image(str(root / folder / f"{f}.png"), seed=100 * seed + i)
    for src, dst in copies:
        shutil.copy(src, dst)
    return root


def _rel(cat, idx, root) -> list[str]:
    return [os.path.relpath(cat.paths[i], root) for i in idx]


def _split_cfg(**overrides):
    cfg = common.get_config("digits").split
    cfg.heldout_classes = ()
    cfg.update(overrides)
    return cfg


def _assert_no_content_on_two_sides(cat, split):
    """Brute force: the contents of train, support and query are pairwise disjoint; the parts partition."""
    np.testing.assert_array_equal(np.sort(np.concatenate([getattr(split, k) for k in PARTS])), np.arange(len(cat)))
    sides = {k: set(cat.content_ids[getattr(split, k)].tolist()) for k in ("train", "support", "query")}
    assert not sides["train"] & sides["support"]
    assert not sides["train"] & sides["query"]
    assert not sides["support"] & sides["query"]
    # Every excluded copy has its content in training or in another held-out class's evaluated/unused images.
    heldout = set(cat.class_indices(split.heldout_classes).tolist())
    excluded = set(split.excluded_duplicates.tolist())
    for i in excluded:
        assert cat.labels[i] in heldout
        others = [j for j in range(len(cat)) if cat.content_ids[j] == cat.content_ids[i] and j not in excluded]
        assert others and all(cat.labels[j] != cat.labels[i] for j in others)


def test_skip_is_the_default_and_names_the_kept_copy(dup_tree):
    cat = folder_catalogue(str(dup_tree))
    assert len(cat) == 22 - 5 and cat.content_ids is None and cat.duplicate_sets() == []
    dups = sorted((os.path.relpath(s.path, dup_tree), s.reason) for s in cat.skipped)
    assert [d[0] for d in dups] == ["A/hat/1.png", "A/hat/4.png", "B/shirt/1.png", "B/shirt/3.png", "B/twin/1.png"]
    assert dups[2][1] == f"duplicate: same bytes as {dup_tree / 'A/bag/3.png'}"  # the first copy in walk order


def test_keep_catalogues_every_file_with_content_ids(dup_tree):
    cat = folder_catalogue(str(dup_tree), duplicates="keep")
    assert len(cat) == 22 and not cat.skipped and cat.content_ids.dtype == np.int64
    sets = [_rel(cat, s, dup_tree) for s in cat.duplicate_sets()]
    assert sets == [["A/bag/0.png", "A/hat/1.png"], ["A/bag/3.png", "B/shirt/1.png"], ["A/hat/3.png", "A/hat/4.png"],
                    ["B/shirt/0.png", "B/shirt/3.png"], ["B/twin/0.png", "B/twin/1.png"]]
    # Each copy keeps its own label; equal ids exactly where the bytes are equal.
    data = [open(p, "rb").read() for p in cat.paths]
    for i in range(len(cat)):
        for j in range(len(cat)):
            assert (cat.content_ids[i] == cat.content_ids[j]) == (data[i] == data[j])
    assert cat.class_names[cat.labels[_rel(cat, range(22), dup_tree).index("A/hat/1.png")]] == "A/hat"


def test_excluded_duplicates_by_hand(dup_tree):
    cat = folder_catalogue(str(dup_tree), group_level=0, duplicates="keep")
    split = make_split(cat, _split_cfg(heldout_classes=("A/bag", "A/hat", "B/twin")), seed=0)
    # (a) A/bag/3 is also a training image (B/shirt/1), although it comes first; (b) A/hat/1 is A/bag/0's copy.
    assert _rel(cat, split.excluded_duplicates, dup_tree) == ["A/bag/3.png", "A/hat/1.png"]
    assert _rel(cat, split.unused, dup_tree) == ["B/twin/0.png", "B/twin/1.png"]  # one content: no support/query
    assert len(split.train) == 11
    hat = [i for i in np.concatenate([split.support, split.query]) if cat.class_names[cat.labels[i]] == "A/hat"]
    assert sorted(_rel(cat, hat, dup_tree)) == ["A/hat/0.png", "A/hat/2.png", "A/hat/3.png", "A/hat/4.png"]
    side_of = {p: s for s in ("support", "query") for p in _rel(cat, getattr(split, s), dup_tree)}
    assert side_of["A/hat/3.png"] == side_of["A/hat/4.png"]  # (c) copies stay together
    assert sum(side_of[p] == "support" for p in side_of if p.startswith("A/hat")) in (2, 3)  # >= half, whole copies
    _assert_no_content_on_two_sides(cat, split)

    assert ("duplicates: kept 5 exact duplicate images (5 sets); 2 copies excluded from evaluation"
            in "\n".join(describe(cat, split)))
    saved = split.to_json(cat)
    assert saved["counts"]["excluded_duplicates"] == 2
    assert saved["excluded_duplicates"] == [str(dup_tree / "A/bag/3.png"), str(dup_tree / "A/hat/1.png")]


def test_keep_splits_never_put_one_content_on_two_sides(dup_tree):
    cat = folder_catalogue(str(dup_tree), group_level=0, duplicates="keep")
    configs = [_split_cfg(num_heldout_classes=n) for n in (1, 2, 3)]
    configs += [_split_cfg(mode="groups", num_heldout_groups=1)]
    configs += [_split_cfg(mode="partial", partial_group=g, num_heldout_classes=n) for g, n in
                [("A", 1), ("B", 1), ("B", 2), ("B", 3)]]
    configs += [_split_cfg(num_heldout_classes=3, support_count=1), _split_cfg(num_heldout_classes=2, support_count=3)]
    checked, excluded = 0, 0
    for cfg in configs:
        for seed in range(6):
            try:
                split = make_split(cat, cfg, seed)
            except UserError as e:  # e.g. only B/twin drawn: nothing to evaluate
                assert "nothing to evaluate" in str(e)
                continue
            _assert_no_content_on_two_sides(cat, split)
            checked, excluded = checked + 1, excluded + len(split.excluded_duplicates)
    assert checked > 40 and excluded > 0


def _old_make_split(cat, cfg, seed):
    """make_split as it was before content ids: (train, support, query, unused)."""
    rng = np.random.default_rng([seed, 1])
    ids = set(cat.class_indices(heldout_classes(cat, cfg, rng)).tolist())
    train = np.flatnonzero([lab not in ids for lab in cat.labels])
    support, query, unused = [], [], []
    for c in sorted(ids):
        members = rng.permutation(np.flatnonzero(cat.labels == c))
        if len(members) < max(2, cfg.min_images_per_class):
            unused.append(members)
            continue
        n = int(np.clip(cfg.support_count or round(cfg.support_fraction * len(members)), 1, len(members) - 1))
        support.append(members[:n])
        query.append(members[n:])
    return [train] + [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in (support, query, unused)]


@pytest.mark.parametrize("cfg", [
    _split_cfg(heldout_classes=("6", "7", "8", "9")),
    _split_cfg(num_heldout_classes=3, support_count=5),
    _split_cfg(num_heldout_classes=5, support_fraction=0.3, min_images_per_class=180),
])
def test_distinct_contents_give_the_split_of_before(cfg):
    plain = digits_catalogue()
    distinct = dataclasses.replace(plain, content_ids=np.arange(len(plain)))
    for seed in range(3):
        old = _old_make_split(plain, cfg, seed)
        for cat in (plain, distinct):
            split = make_split(cat, cfg, seed)
            for a, b in zip(old, (split.train, split.support, split.query, split.unused)):
                np.testing.assert_array_equal(a, b)
            assert len(split.excluded_duplicates) == 0


def test_keep_without_duplicates_splits_as_skip(image_folder):
    skip, keep = folder_catalogue(str(image_folder)), folder_catalogue(str(image_folder), duplicates="keep")
    assert skip.paths == keep.paths and keep.duplicate_sets() == []
    cfg = _split_cfg(num_heldout_classes=1)
    for seed in range(4):
        a, b = make_split(skip, cfg, seed), make_split(keep, cfg, seed)
        for k in PARTS:
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert a.duplicates_summary(skip) is None
        assert b.duplicates_summary(keep).startswith("kept 0 exact duplicate images (0 sets); 0 copies excluded")


def test_unknown_duplicates_value_is_a_one_line_user_error(image_folder):
    data = common.get_config("digits").data
    data.duplicates = "drop"
    with pytest.raises(UserError, match=r"^data.duplicates: unknown value 'drop'; use 'skip' or 'keep'$"):
        load_catalogue(data)  # for every source, digits included
    with pytest.raises(UserError, match="data.duplicates"):
        folder_catalogue(str(image_folder), duplicates="Keep")
    assert common.get_config("digits").data.duplicates == "skip"


def test_resume_compares_excluded_duplicates(dup_tree, tmp_path):
    cat = folder_catalogue(str(dup_tree), group_level=0, duplicates="keep")
    split = make_split(cat, _split_cfg(heldout_classes=("A/bag", "A/hat", "B/twin")), seed=0)
    path = str(tmp_path / "splits.json")
    write_split(split, cat, path)
    write_split(split, cat, path, must_match_existing=True)  # the same split: fine
    with open(path) as f:
        saved = json.load(f)
    saved["excluded_duplicates"] = saved["excluded_duplicates"][:1]
    with open(path, "w") as f:
        json.dump(saved, f)
    with pytest.raises(UserError, match="the excluded_duplicates images differ"):
        write_split(split, cat, path, must_match_existing=True)
    # A splits.json written before excluded_duplicates existed matches a split without any.
    plain = folder_catalogue(str(dup_tree), group_level=0)
    plain_split = make_split(plain, _split_cfg(heldout_classes=("A/bag", "A/hat")), seed=0)
    write_split(plain_split, plain, path)
    with open(path) as f:
        saved = json.load(f)
    del saved["excluded_duplicates"], saved["counts"]["excluded_duplicates"]
    with open(path, "w") as f:
        json.dump(saved, f)
    write_split(plain_split, plain, path, must_match_existing=True)
