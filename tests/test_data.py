import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from configs import common
from conftest import run_launch, write_image
from navee_jax.data.pipeline import eval_batches, pk_indices, train_batches
from navee_jax.data.sources import digits_catalogue, folder_catalogue
from navee_jax.data.splits import make_split
from navee_jax.errors import UserError


def test_digits_catalogue_is_sklearn_digits():
    cat, ref = digits_catalogue(), load_digits()
    assert len(cat) == 1797 and cat.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(cat.labels, ref.target)
    np.testing.assert_allclose(cat.pixels[..., 0] / 255 * 16, ref.images, atol=16 / 255)


def test_digits_split_holds_out_6_to_9_as_a_partition():
    cfg = common.get_config("digits")
    cat = digits_catalogue()
    split = make_split(cat, cfg.split, seed=0)
    assert set(cat.labels[split.train]) == {0, 1, 2, 3, 4, 5}
    assert set(cat.labels[split.support]) == set(cat.labels[split.query]) == {6, 7, 8, 9}
    everything = np.concatenate([split.train, split.support, split.query, split.unused])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(cat)))
    again = make_split(cat, cfg.split, seed=0)
    np.testing.assert_array_equal(split.support, again.support)
    assert not np.array_equal(split.support, make_split(cat, cfg.split, seed=1).support)


def test_pk_indices_draw_p_classes_k_images():
    labels = np.repeat(np.arange(8), [5, 5, 5, 5, 5, 5, 3, 1])
    pool = np.arange(len(labels))
    batches = pk_indices(labels, pool, classes_per_batch=4, images_per_class=4, num_batches=30,
                         rng=np.random.default_rng(0))
    for b in batches:
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(classes) == 4 and np.all(counts == 4)
        assert 7 not in classes  # a single-image class can form no positive pair
        for c in classes:
            if c != 6:  # enough images: no repeats within a class
                assert len(np.unique(b[labels[b] == c])) == 4
    with pytest.raises(UserError, match="classes_per_batch"):
        pk_indices(labels, pool, 8, 2, 1, np.random.default_rng(0))


def test_train_batches_are_deterministic_and_match_the_images():
    cfg = common.get_config("digits")
    cfg.data.image_size = 8
    cfg.data.flip = False
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    a = list(train_batches(cat, pool, cfg, epoch=3, num_batches=2))
    b = list(train_batches(cat, pool, cfg, epoch=3, num_batches=2))
    c = list(train_batches(cat, pool, cfg, epoch=4, num_batches=2))
    np.testing.assert_array_equal(a[0]["images"], b[0]["images"])
    assert not np.array_equal(a[0]["images"], c[0]["images"])
    # At the source resolution and without flips, the batch is the source pixels, bit for bit.
    idx = pk_indices(cat.labels, pool, 6, 8, 2, np.random.default_rng([cfg.seed, 2, 3]))[0]
    assert a[0]["images"].dtype == np.uint8
    np.testing.assert_array_equal(a[0]["images"], np.repeat(cat.pixels[idx], 3, axis=-1))
    np.testing.assert_array_equal(a[0]["labels"], cat.labels[idx])


def test_flip_is_seeded_and_mirrors():
    cfg = common.get_config("digits")
    cfg.data.image_size = 8
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    flipped = next(train_batches(cat, pool, cfg, 0, 1))["images"]
    cfg.data.flip = False
    plain = next(train_batches(cat, pool, cfg, 0, 1))["images"]
    same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < len(mirrored)


def test_folder_source_decodes_in_tf_like_pil(image_folder):
    cat = folder_catalogue(str(image_folder))
    assert cat.class_names == ("class0", "class1", "class2") and len(cat) == 12 and not cat.skipped
    cfg = common.get_config("digits")
    cfg.data.image_size = 12  # the source size: no resampling
    png = [i for i, p in enumerate(cat.paths) if p.endswith(".png")][0]
    got = next(eval_batches(cat, np.array([png]), cfg.data, 1))[0]
    from PIL import Image
    np.testing.assert_array_equal(got, np.asarray(Image.open(cat.paths[png]).convert("RGB")))


def test_bad_files_are_skipped_counted_and_listed(image_folder):
    (image_folder / "empty_class").mkdir()
    (image_folder / "class0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (image_folder / "class1" / "notes.txt").write_text("not an image")
    (image_folder / "stray.png").write_bytes(b"")
    cat = folder_catalogue(str(image_folder))
    assert len(cat) == 12
    reasons = {s.path: s.reason for s in cat.skipped}
    assert reasons[str(image_folder / "empty_class")].startswith("empty class folder")
    assert reasons[str(image_folder / "class0" / "corrupt.jpg")].startswith("unreadable image")
    assert reasons[str(image_folder / "class1" / "notes.txt")].startswith("unsupported file")
    assert reasons[str(image_folder / "stray.png")].startswith("not in a class folder")
    assert "skipped 4 file(s)/folder(s)" in cat.skip_report()[0]


def _launch_on_folder(root, workdir, *extra):
    return run_launch(["--config=configs/triplet.py:digits", f"--workdir={workdir}", "--config.data.source=folder",
                       f"--config.data.root={root}", "--config.split.heldout_classes=()",
                       "--config.split.num_heldout_classes=1", "--config.sampler.classes_per_batch=2",
                       "--config.sampler.images_per_class=2", "--config.model.width=4", "--config.model.embed_dim=8",
                       "--config.data.image_size=8", "--config.train.num_epochs=1", "--config.train.steps_per_epoch=1",
                       "--config.eval.ways=2", "--config.eval.shots=(1,)", *extra], timeout=300)


def test_launch_reports_missing_root_in_one_line(tmp_path):
    r = _launch_on_folder(tmp_path / "nowhere", tmp_path / "w")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert str(tmp_path / "nowhere") in r.stderr


@pytest.mark.slow
def test_launch_skips_corrupt_and_empty_then_trains(image_folder, tmp_path):
    (image_folder / "empty_class").mkdir()
    bad = image_folder / "class1" / "truncated.png"
    write_image(str(bad), seed=99)
    bad.write_bytes(bad.read_bytes()[:40])  # a PNG cut short: the header parses, decoding fails
    r = _launch_on_folder(image_folder, tmp_path / "w")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "skipped 2 file(s)/folder(s)" in r.stdout
    assert f"skipped {bad}: unreadable image" in r.stdout
    assert f"skipped {image_folder / 'empty_class'}: empty class folder" in r.stdout
    listed = json.loads((tmp_path / "w" / "skipped_files.json").read_text())
    assert {e["path"] for e in listed} == {str(bad), str(image_folder / "empty_class")}
    # New photos since the run started: resuming would train on another split, so it stops in one line.
    write_image(str(image_folder / "class2" / "new.png"), seed=123)
    r = _launch_on_folder(image_folder, tmp_path / "w")
    assert r.returncode == 2 and "splits.json" in r.stderr and "data changed" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def _grouped_catalogue():
    """4 groups (brands) x 5 classes (articles) x 3 images, as tiny in-memory pixels."""
    from navee_jax.data.catalogue import Catalogue

    classes = [f"brand{g}/article{a}" for g in range(4) for a in range(5)]
    labels = np.repeat(np.arange(20), 3)
    return Catalogue(name="toy", labels=labels, class_names=tuple(classes), pixels=np.zeros((60, 2, 2, 1), np.uint8),
                     groups=tuple(classes[lab].split("/")[0] for lab in labels))


def _split_cfg(**overrides):
    cfg = common.get_config("digits").split
    cfg.heldout_classes = ()
    cfg.update(overrides)
    return cfg


def test_group_split_holds_out_whole_groups():
    cat = _grouped_catalogue()
    split = make_split(cat, _split_cfg(mode="groups", num_heldout_groups=2), seed=0)
    groups = np.array(cat.groups)
    train_groups, test_groups = set(groups[split.train]), set(groups[np.concatenate([split.support, split.query])])
    assert len(test_groups) == 2 and not train_groups & test_groups and len(train_groups) == 2
    named = make_split(cat, _split_cfg(mode="groups", heldout_groups=("brand3",)), seed=0)
    assert set(groups[named.support]) == {"brand3"} and len(named.train) == 45
    np.testing.assert_array_equal(np.sort(np.concatenate([named.train, named.support, named.query])), np.arange(60))


def test_partial_split_holds_out_some_classes_of_a_seen_group():
    cat = _grouped_catalogue()
    split = make_split(cat, _split_cfg(mode="partial", partial_group="brand1", num_heldout_classes=2), seed=0)
    groups, labels = np.array(cat.groups), cat.labels
    held = set(labels[split.support])
    assert len(held) == 2 and set(groups[split.support]) == {"brand1"}
    assert "brand1" in set(groups[split.train])  # the rest of the brand trains
    assert not held & set(labels[split.train])


def test_split_modes_report_bad_config_in_one_line():
    with pytest.raises(UserError, match="needs groups"):
        make_split(digits_catalogue(), _split_cfg(mode="groups"), seed=0)
    with pytest.raises(UserError, match="split.partial_group: 'nope'"):
        make_split(_grouped_catalogue(), _split_cfg(mode="partial", partial_group="nope", num_heldout_classes=1), 0)
    with pytest.raises(UserError, match="split.heldout_groups"):
        make_split(_grouped_catalogue(), _split_cfg(mode="groups", heldout_groups=("brand9",)), seed=0)


def test_original_kaggle_styles_csv_with_unquoted_commas(tmp_path):
    from navee_jax.data.sources import styles_catalogue

    (tmp_path / "images").mkdir()
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    lines = [header,
             "1,Men,Apparel,Topwear,Tshirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
             "2,Women,Accessories,Bags,Handbags,Black,Summer,2012,Casual,Lino Perros, Women's Black, Handbag",
             "3,Men,Footwear,Shoes,Casual Shoes,White,Summer,2012,Casual,Puma Men White Shoes",
             "4,Men,Footwear",
             "5,Women,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Red, red, red tee"]
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n")
    for i in (1, 2, 4, 5):
        write_image(str(tmp_path / "images" / f"{i}.jpg"), seed=i)
    cat = styles_catalogue(str(tmp_path), label_column="articleType", group_column="masterCategory")
    assert sorted(zip([os.path.basename(p) for p in cat.paths], [cat.class_names[i] for i in cat.labels])) == \
        [("1.jpg", "Tshirts"), ("2.jpg", "Handbags"), ("5.jpg", "Tshirts")]
    reasons = sorted(s.reason.split(":")[0] for s in cat.skipped)
    assert reasons == ["malformed row", "missing image for a styles.csv row"]
    with pytest.raises(UserError, match="column 'colour'"):
        styles_catalogue(str(tmp_path), label_column="colour")


def test_each_process_decodes_its_share_of_the_same_global_batch():
    cfg = common.get_config("digits")
    cfg.data.image_size = 8
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    whole = list(train_batches(cat, pool, cfg, epoch=2, num_batches=2))
    shares = [list(train_batches(cat, pool, cfg, epoch=2, num_batches=2, process_index=p, process_count=2))
              for p in range(2)]
    for b in range(2):
        for key in ("images", "labels"):  # flips included: seeds follow the global position
            np.testing.assert_array_equal(np.concatenate([shares[0][b][key], shares[1][b][key]]), whole[b][key])
    with pytest.raises(UserError, match="not divisible by 5 processes"):
        next(train_batches(cat, pool, cfg, epoch=2, num_batches=1, process_index=0, process_count=5))


def test_support_by_count_or_fraction_and_pk_batches_follow_the_seed():
    cat = _grouped_catalogue()  # 3 images per class
    by_count = make_split(cat, _split_cfg(num_heldout_classes=4, support_count=2), seed=0)
    assert np.all(np.bincount(cat.labels[by_count.support], minlength=20)[np.unique(cat.labels[by_count.support])] == 2)
    assert len(by_count.query) == 4  # one query image left per class
    too_many = make_split(cat, _split_cfg(num_heldout_classes=4, support_count=5), seed=0)
    assert len(too_many.query) == 4  # never all of a class: one query image stays
    digits = digits_catalogue()
    pool = np.flatnonzero(digits.labels < 6)
    a, b = (pk_indices(digits.labels, pool, 6, 4, 3, np.random.default_rng([s, 2, 0])) for s in (0, 1))
    np.testing.assert_array_equal(a, pk_indices(digits.labels, pool, 6, 4, 3, np.random.default_rng([0, 2, 0])))
    assert not np.array_equal(a, b)
