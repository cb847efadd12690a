"""The supervised classifier method (issue 18): stratified split, cross-entropy, label levels, one short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, run_launch, write_image
from navee_jax.classify.evaluator import LevelScorer, parent_of_class
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import shuffled_indices
from navee_jax.data.sources import styles_catalogue
from navee_jax.data.splits import make_split
from navee_jax.errors import UserError
from navee_jax.launcher.config_check import check_config
from navee_jax.losses.cross_entropy import softmax_cross_entropy


def _catalogue(sizes: list[int]) -> Catalogue:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]  # classes interleaved, as files are
    return Catalogue(name="t", labels=labels, class_names=tuple(f"c{c}" for c in range(len(sizes))),
                     pixels=np.zeros((len(labels), 2, 2, 3), np.uint8))


def _cfg(test_fraction=0.2, validation_fraction=0.1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"mode": "stratified", "test_fraction": test_fraction,
                                      "validation_fraction": validation_fraction})


def test_stratified_split_is_a_seeded_partition_with_every_class_on_both_sides():
    sizes = [1, 2, 3, 5, 10, 40]
    cat = _catalogue(sizes)
    split = make_split(cat, _cfg(), seed=0)
    parts = np.concatenate([split.train, split.validation, split.test])
    assert sorted(parts.tolist()) == list(range(len(cat)))  # a partition
    assert split.untested_classes == ("c0",)  # the one-image class trains only, and is named
    for c, n in enumerate(sizes):
        train, val, test = (int(np.sum(cat.labels[p] == c)) for p in (split.train, split.validation, split.test))
        # the rounding rule by hand: test = round(0.2 n) in [1, n-1]; validation = round(0.1 n) leaving one to train
        want_test = 0 if n < 2 else min(max(round(0.2 * n), 1), n - 1)
        want_val = 0 if n < 2 else min(round(0.1 * n), n - want_test - 1)
        assert (test, val, train) == (want_test, want_val, n - want_test - want_val), c
        if n >= 2:
            assert train >= 1 and test >= 1
    again = make_split(cat, _cfg(), seed=0)
    other = make_split(cat, _cfg(), seed=1)
    np.testing.assert_array_equal(again.test, split.test)
    assert not np.array_equal(other.test, split.test)


def test_stratified_split_refuses_kept_duplicates_and_a_single_class():
    cat = _catalogue([4, 4])
    kept = Catalogue(name="t", labels=cat.labels, class_names=cat.class_names, pixels=cat.pixels,
                     content_ids=np.arange(len(cat)))
    with pytest.raises(UserError, match="data.duplicates='skip'"):
        make_split(kept, _cfg(), 0)
    with pytest.raises(UserError, match="at least 2"):
        make_split(_catalogue([5]), _cfg(), 0)


def test_shuffled_batches_take_every_image_once_per_pass():
    pool = np.arange(100, 123)  # 23 images, batches of 5: passes cross batch boundaries
    batches = shuffled_indices(pool, 5, 9, np.random.default_rng(0))
    flat = batches.reshape(-1)
    assert batches.shape == (9, 5)
    assert sorted(flat[:23].tolist()) == pool.tolist()  # the first pass is a permutation of the pool
    assert len(set(flat[23:].tolist())) == 45 - 23  # the second pass repeats nothing within itself


def _numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    c = logits.shape[1]
    targets = np.full_like(logits, smoothing / c)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(targets * log_p).sum(axis=1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_and_its_gradient_equal_numpy_and_finite_differences(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4)) * 2
    labels = rng.integers(0, 4, 6)
    got = float(softmax_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), smoothing))
    assert got == pytest.approx(_numpy_cross_entropy(logits, labels, smoothing), rel=1e-5)
    grad = np.asarray(jax.grad(lambda z: softmax_cross_entropy(z, jnp.asarray(labels), smoothing))(
        jnp.asarray(logits, jnp.float32)))
    eps, numeric = 1e-5, np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (_numpy_cross_entropy(up, labels, smoothing)
                        - _numpy_cross_entropy(down, labels, smoothing)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-5)


def test_a_class_reads_as_the_parent_most_of_its_training_images_carry():
    labels = np.array([0, 0, 0, 1, 1, 2])
    parents = ("Sandal", "Sandal", "Shoes", "Bags", "Accessories", "Bags")  # class 1: a tie, the first sorted wins
    assert parent_of_class(labels, parents, 4) == ["Sandal", "Accessories", "Bags", ""]
    # four more images to score: classes 0, 1, 2, 2 whose own subCategory is Sandal, Bags, Bags, Shoes
    cat = Catalogue(name="t", labels=np.concatenate([labels, [0, 1, 2, 2]]), class_names=("a", "b", "c", "d"),
                    pixels=np.zeros((10, 2, 2, 3), np.uint8),
                    levels={"subCategory": parents + ("Sandal", "Bags", "Bags", "Shoes")})
    score = LevelScorer(cat, np.arange(6))
    # predicted 0, 1, 2, 2 read as Sandal, Accessories, Bags, Bags: by hand rows 6 and 8 match
    assert score(np.array([0, 1, 2, 2]), np.arange(6, 10)) == {"class": 1.0, "subCategory": 0.5}


def _styles(tmp_path) -> str:
    (tmp_path / "images").mkdir()
    rows = ["id,gender,masterCategory,subCategory,articleType,baseColour"]
    types = [("Apparel", "Topwear", "Tshirts"), ("Footwear", "Shoes", "Casual Shoes"),
             ("Footwear", "Sandal", "Sandals")]
    for i in range(12):
        master, sub, kind = types[i % 3]
        rows.append(f"{i},Men,{master},{sub},{kind},Black")
        write_image(str(tmp_path / "images" / f"{i}.jpg"), seed=i)
    (tmp_path / "styles.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path)


def test_label_levels_are_each_images_own_coarser_labels_and_a_bad_column_lists_the_columns(tmp_path):
    root = _styles(tmp_path)
    cat = styles_catalogue(root, "articleType", label_levels=("subCategory", "masterCategory"))
    for i, path in enumerate(cat.paths):
        n = int(os.path.basename(path)[:-4])
        assert cat.class_names[cat.labels[i]] == ("Tshirts", "Casual Shoes", "Sandals")[n % 3]
        assert cat.levels["masterCategory"][i] == ("Apparel", "Footwear", "Footwear")[n % 3]
        assert cat.levels["subCategory"][i] == ("Topwear", "Shoes", "Sandal")[n % 3]
    with pytest.raises(UserError) as e:
        styles_catalogue(root, "articleTyp")
    message = str(e.value)
    assert "'articleTyp'" in message and "articleType" in message and "baseColour" in message and "\n" not in message
    with pytest.raises(UserError, match="data.label_levels: column 'category'"):
        styles_catalogue(root, "articleType", label_levels=("category",))


@pytest.mark.parametrize("key, value, message", [
    ("split.test_fraction", 1.0, "split.test_fraction"),
    ("loss.label_smoothing", 1.0, "loss.label_smoothing"),
    ("sampler.kind", "pk", "method='classifier' trains on ['shuffled']"),
    ("data.label_levels", ("masterCategory",), "data.label_levels"),
    ("data.rotated_classes", (90,), "split.mode='stratified' cannot score"),
    ("model.tta_shift_px", 2, "a stratified split's classifier is scored by its logits"),
])
def test_bad_classifier_settings_are_one_line(key, value, message):
    from configs import classifier

    cfg = classifier.get_config()
    section, leaf = key.split(".")
    cfg[section][leaf] = value
    with pytest.raises(UserError) as e:
        check_config(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_short_classifier_run_learns_and_its_workdir_reads_back_as_its_evaluator_scored_it(tmp_path):
    """A short run learns the glyphs; its latest checkpoint, read back for new photos (the recognizer's path:
    arrays, and PNG files through the CLI) and by --mode=evaluate, scores exactly the test accuracy its
    evaluator recorded at the end."""
    from PIL import Image

    from navee_jax.classify.trained import TrainedClassifier
    from navee_jax.data.catalogue import Catalogue
    from navee_jax.data.sources import load_catalogue
    from navee_jax.recognize.category import predict_categories

    workdir = tmp_path / "run"
    run = ["--config=configs/classifier.py", f"--workdir={workdir}", "--config.model.backbone=conv4",
           "--config.data.image_size=28", "--config.train.num_epochs=2", "--config.train.steps_per_epoch=25"]
    r = run_launch(run)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    final, initial = metrics["final"], metrics["initial"]
    # 130 letters: chance is 0.008; 50 steps of cross-entropy must be far above it on test images
    assert final["test_accuracy"] > initial["test_accuracy"] + 0.15
    assert metrics["best_epoch"]["accuracy"] == max(h["accuracy"] for h in metrics["history"])
    assert "final test accuracy" in r.stdout and "final train accuracy" in r.stdout
    classifier = TrainedClassifier.load(str(workdir), "latest")
    catalogue = load_catalogue(classifier.config.data)
    test = [int(ref.split("[")[1][:-1]) for ref in json.loads((workdir / "splits.json").read_text())["query"]]
    # Test-time flip averaging: the mean of the probabilities of each image and of its mirror image (made here,
    # before the resize: a few pixels round to another grey level, hence the tolerance, 100x below the effect).
    mirror = Catalogue("mirror", catalogue.labels[test], catalogue.class_names,
                       pixels=np.ascontiguousarray(catalogue.pixels[test][:, :, ::-1]))
    want = (classifier.probabilities(catalogue, test) + classifier.probabilities(mirror, np.arange(len(test)))) / 2
    np.testing.assert_allclose(classifier.probabilities(catalogue, test, mirrored=True), want, atol=3e-4)
    assert np.abs(want - classifier.probabilities(catalogue, test)).max() > 3e-2
    predictions = predict_categories(classifier, catalogue.pixels[test], k=3)
    top1 = np.array([p.top_k[0][0] for p in predictions])
    truth = np.array([catalogue.class_names[catalogue.labels[i]] for i in test])
    assert np.mean(top1 == truth) == pytest.approx(metrics["final"]["test_accuracy"], abs=1e-9)
    assert all(p.top_k[0][1] >= p.top_k[1][1] >= p.top_k[2][1] for p in predictions)
    for i in range(3):
        Image.fromarray(catalogue.pixels[test[i]].squeeze(-1)).save(tmp_path / f"{i}.png")  # (H, W, 1): gray
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = subprocess.run([sys.executable, "-m", "navee_jax.recognize", "categorize", f"--workdir={workdir}",
                          "--checkpoint=latest", "--top_k=3", "--format=json",
                          *[str(tmp_path / f"{i}.png") for i in range(3)], str(tmp_path / "broken.png")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and "broken.png" in out.stderr, out.stderr[-2000:]  # named; the others scored
    rows = json.loads(out.stdout)
    for i in range(3):
        assert [t["category"] for t in rows[i]["top_k"]] == [c for c, _ in predictions[i].top_k]
        np.testing.assert_allclose([t["probability"] for t in rows[i]["top_k"]], [q for _, q in predictions[i].top_k],
                                   atol=1e-5)
    assert rows[3]["error"] and rows[3]["category"] is None

    # --mode=evaluate writes the report of the same checkpoint: the same test accuracy, class by class
    r = run_launch([*run, "--mode=evaluate", "--checkpoint=latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["accuracy"]["test"]["class"] == pytest.approx(metrics["final"]["test_accuracy"], abs=1e-9)
    per_class = report["per_class_test"]
    assert sum(c["test_images"] for c in per_class) == len(test)
    assert sum(c["correct"] for c in per_class) / len(test) == pytest.approx(metrics["final"]["test_accuracy"])
    assert {"confusion_matrix.png", "misclassified.png"} <= set(os.listdir(workdir / "report"))


def test_the_studys_hog_has_the_1728_values_it_names():
    from skimage.feature import hog
    from skimage.transform import resize

    from navee_jax.evaluate.baselines import study_hog_features

    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    got = study_hog_features(images)
    assert got.shape == (2, 1728)  # 9 x 6 blocks x 2 x 2 cells x 8 orientations on 80 x 60 pixels
    gray = images.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]) / 255  # ITU-R 709, as skimage's rgb2gray
    want = hog(resize(gray[1], (80, 60), anti_aliasing=True), orientations=8, pixels_per_cell=(8, 8),
               cells_per_block=(2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(got[1], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shift", [0, 2])
def test_on_a_few_shot_split_the_classifier_is_evaluated_on_its_normalised_backbone_features(shift):
    """The classical transfer baseline: trained on the training classes, its embedding of held-out images is
    the backbone's output (the class head dropped), L2-normalised, and held-out mAP picks its checkpoints; with
    model.tta_shift_px, the normalised mean of the 9 shifted copies' embeddings."""
    from flax import nnx

    from configs import classifier
    from navee_jax.classify.network import build_classifier
    from navee_jax.embed import image_normalizer
    from navee_jax.evaluate.heldout import HeldoutEvaluator
    from navee_jax.launcher.train import build_setup
    from navee_jax.method import method_of

    cfg = classifier.get_config("")
    cfg.split.mode, cfg.split.num_heldout_classes = "classes", 30
    cfg.model.backbone = "conv4"  # at the glyphs' own 32x32
    cfg.model.tta_shift_px = shift
    check_config(cfg)
    setup = build_setup(cfg)
    assert method_of(cfg).selection(cfg) == ("map", "held-out mAP")
    assert [type(e) for e in setup.trainer.evaluators] == [HeldoutEvaluator]
    pixels = setup.catalogue.pixels[setup.split.query[:8]]
    got = np.asarray(setup.trainer.embed_fn(setup.trainer.state, jnp.asarray(pixels)))  # uint8, as the pipeline's
    reference = build_classifier(cfg, len(setup.catalogue.class_names), nnx.Rngs(cfg.seed))  # the same init
    reference.eval()

    def normalised_features(px: np.ndarray) -> np.ndarray:
        x = image_normalizer(cfg.data, cfg.model.in_channels)(jnp.asarray(px))
        features = np.asarray(reference.backbone(x))
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    h, w = pixels.shape[1:3]
    fill = round(255 * cfg.data.fill)
    padded = np.pad(pixels, ((0, 0), (shift, shift), (shift, shift), (0, 0)), constant_values=fill)
    want = np.mean([normalised_features(padded[:, shift - dy:shift - dy + h, shift - dx:shift - dx + w])
                    for dy in {-shift, 0, shift} for dx in {-shift, 0, shift}], axis=0)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_mcnemar_counts_the_discordant_photos_and_gives_the_exact_binomial_p():
    """bench/classical.py's paired comparison, by hand: of 10 photos only one of the two classifiers gets right, 1
    go to the first and 9 to the second; two-sided exact p = 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * 11 / 1024.
    Photos both get right or wrong do not count; no discordant photo is p = 1."""
    sys.path.insert(0, REPO)
    from bench.classical import mcnemar

    first = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    second = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    only_first, only_second, p = mcnemar(first, second)
    assert (only_first, only_second) == (1, 9)
    assert p == pytest.approx(22 / 1024)
    assert mcnemar(second, first)[2] == pytest.approx(22 / 1024)
    assert mcnemar(first, first) == (0, 0, 1.0)
