r"""The study's classical route on the shared fashion photos (its tables 1-3): a CNN classifier trained from
scratch with three seeds, HOG / raw-pixel / CNN features with kNN and an MLP, and voting ensembles, all on one
stratified split (70 / 10 / 20 train / validation / test per class, split seed 0), each scored at articleType
and read at subCategory and masterCategory (docs/classical.md).

    python bench/classical.py [--root=runs/classical] [--seeds=0,1,2] [--image-size=64]

Trains the members it lacks (`configs/classifier.py:fashion` with `--config.seed=<s> --config.split.seed=0`,
plus the overrides in CNN_OVERRIDES; a finished workdir is reused; `--image-size` other than the config's 64
trains them at that size, in `cnn<size>_seed<s>`, and computes the project's HOG at it too), then writes
`<root>/table.md` (`<root>/table_<size>.md`). The kNN's k is
chosen on the validation part, and the MLP's epoch (the study's 1,728-256-150-classes shape) too.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.runs import train, training_minutes  # noqa: E402
from configs.common import FASHION  # noqa: E402

# Changes to configs/classifier.py:fashion for the table's CNN members (the CPU budget in docs/classical.md).
CNN_OVERRIDES: list[str] = []
LEVELS = ("articleType", "subCategory", "masterCategory")
MLP_EPOCHS = 60  # the epoch is chosen on validation; on the study's HOG it peaked at 7 of 200 (2026-12-07)


DEFAULT_SIZE = 64  # configs/classifier.py:fashion's data.image_size


def train_member(root: str, seed: int, size: int) -> str:
    at_size = [] if size == DEFAULT_SIZE else [f"--config.data.image_size={size}"]
    workdir = os.path.join(root, f"cnn_seed{seed}" if size == DEFAULT_SIZE else f"cnn{size}_seed{seed}")
    train(["--config=configs/classifier.py:fashion", f"--config.seed={seed}", "--config.split.seed=0",
           *CNN_OVERRIDES, *at_size], workdir)
    return workdir


def feature_sets(catalogue, split, config, cnn) -> dict[str, tuple[np.ndarray, ...]]:
    """(train, validation, test) features of each extractor."""
    import ml_collections

    from navee_jax.evaluate.baselines import features_for, hog_features, raw_pixel_features, study_hog_features

    def at(size: int, extractor) -> tuple[np.ndarray, ...]:
        data = ml_collections.ConfigDict(config.data.to_dict())
        data.image_size = size
        return tuple(features_for(part, catalogue, data, extractor, 256)
                     for part in (split.train, split.validation, split.test))

    return {
        "HOG, the study's (60x80 gray, 8 orientations, 8-px cells: 1,728 values)": at(224, study_hog_features),
        f"HOG, the project's ({config.data.image_size}x{config.data.image_size} gray, 8x8 cells: 1,764 values)":
            at(config.data.image_size, hog_features),
        "raw pixels (32x32 gray)": at(32, lambda im: raw_pixel_features(im, grayscale=True)),
        "CNN features (seed 0's backbone, before its class head)":
            tuple(cnn.features(catalogue, part) for part in (split.train, split.validation, split.test)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(REPO, "runs", "classical"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--image-size", type=int, default=DEFAULT_SIZE, help="the CNN members' input size")
    a = p.parse_args()
    if not os.path.isdir(FASHION):
        sys.exit(f"skipped: {FASHION} is absent (the shared fashion photos, ../shared/data)")
    from navee_jax.classify.evaluator import LevelScorer
    from navee_jax.classify.trained import TrainedClassifier
    from navee_jax.evaluate.feature_classifiers import choose_k, knn_proba, mlp_fit_predict_proba, standardize
    from navee_jax.evaluate.voting import hard_vote, soft_vote, soft_vote_predict
    from navee_jax.launcher.train import prepare_data
    from navee_jax.recorded_config import read_config

    seeds = [int(s) for s in a.seeds.split(",")]
    workdirs = [train_member(a.root, s, a.image_size) for s in seeds]
    config = read_config(workdirs[0])
    catalogue, split = prepare_data(config)
    scorer = LevelScorer(catalogue, split.train)

    def score(predicted: np.ndarray, indices: np.ndarray) -> list[float]:
        return list(scorer(predicted, indices).values())  # the label column first, then LEVELS[1:]

    labels = catalogue.labels
    n_classes = len(catalogue.class_names)
    rows, test_probs = [], {}

    def add(name: str, train_pred: np.ndarray, test_pred: np.ndarray, minutes: str = "") -> None:
        rows.append((name, score(train_pred, split.train), score(test_pred, split.test), minutes))
        print(f"{name}: test {rows[-1][2]}", flush=True)

    members = [TrainedClassifier.load(w) for w in workdirs]
    size = config.data.image_size
    for mirrored in (False, True):  # then each photo's and its mirror image's probabilities averaged (test time)
        for seed, w, cnn in zip(seeds, workdirs, members):
            name = f"CNN seed {seed}" + (", mirror-averaged" if mirrored else "")
            test_probs[name] = cnn.probabilities(catalogue, split.test, mirrored)
            add(f"CNN ({config.model.backbone} at {size}x{size}, from scratch), seed {seed}"
                + (", each photo's and its mirror image's probabilities averaged" if mirrored else ""),
                cnn.probabilities(catalogue, split.train, mirrored).argmax(1), test_probs[name].argmax(1),
                "" if mirrored else training_minutes(w))
    ytr, yva = labels[split.train], labels[split.validation]
    for name, (tr, va, te) in feature_sets(catalogue, split, config, members[0]).items():
        tr, va, te = standardize(tr, va, te)
        k, _ = choose_k(tr, ytr, va, yva, n_classes)
        test_probs[f"{name} + kNN"] = knn_proba(tr, ytr, te, k, n_classes)
        add(f"{name} + kNN (k={k} by validation; train images are their own neighbours)",
            knn_proba(tr, ytr, tr, k, n_classes).argmax(1), test_probs[f"{name} + kNN"].argmax(1))
        mlp = mlp_fit_predict_proba(tr, ytr, [tr, te], n_classes, seed=0, max_iter=MLP_EPOCHS, val=(va, yva))
        test_probs[f"{name} + MLP"] = mlp.probas[1]
        add(f"{name} + MLP ({tr.shape[1]}-256-150-{n_classes}, epoch {mlp.epochs} by validation)",
            mlp.probas[0].argmax(1), mlp.probas[1].argmax(1))
    cnn_names = [f"CNN seed {s}" for s in seeds]
    hog = next(n for n in test_probs if n.startswith("HOG, the study's") and n.endswith("MLP"))
    hog_knn = hog[:-len("MLP")] + "kNN"
    ensembles = {f"soft vote of the {len(seeds)} CNN seeds": ("soft", cnn_names),
                 f"hard vote of the {len(seeds)} CNN seeds": ("hard", cnn_names),
                 f"soft vote of the {len(seeds)} CNN seeds, mirror-averaged": (
                     "soft", [f"{n}, mirror-averaged" for n in cnn_names]),
                 "soft vote of CNN seed 0 + study HOG MLP + study HOG kNN": ("soft", [cnn_names[0], hog, hog_knn]),
                 "hard vote of CNN seed 0 + study HOG MLP + study HOG kNN": ("hard", [cnn_names[0], hog, hog_knn])}
    ensemble_rows = []
    for name, (how, parts) in ensembles.items():
        probs = [test_probs[m] for m in parts]
        pred = soft_vote_predict(probs) if how == "soft" else hard_vote([q.argmax(1) for q in probs], n_classes)
        ensemble_rows.append((name, score(pred, split.test)))
        print(f"{name}: test {ensemble_rows[-1][1]}", flush=True)
        if how == "soft":
            test_probs[name] = soft_vote(probs)
    # The CNN against HOG + MLP on the same test photos, paired: the photos only one of the two gets right.
    right = {name: test_probs[name].argmax(1) == labels[split.test] for name in test_probs}
    hog_mlps = [n for n in test_probs if n.startswith("HOG") and n.endswith("MLP")]
    cnns = [n for n in test_probs if n.startswith("CNN seed") or n.startswith(f"soft vote of the {len(seeds)}")]
    paired_rows = [(cnn, hog_mlp, *mcnemar(right[cnn], right[hog_mlp])) for cnn in cnns for hog_mlp in hog_mlps]
    write_table(a.root, rows, ensemble_rows, split, paired_rows,
                "table.md" if a.image_size == DEFAULT_SIZE else f"table_{a.image_size}.md")


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> tuple[int, int, float]:
    """(photos only a gets right, only b gets right, McNemar's exact two-sided p-value: a binomial test of the
    discordant photos, as likely either way if a and b are equally accurate)."""
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(b_right & ~a_right))
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0


def write_table(root: str, rows, ensemble_rows, split, paired_rows, filename: str) -> None:
    head = " | ".join(f"test {lvl}" for lvl in LEVELS)
    lines = [f"Test: {len(split.test)} images; train: {len(split.train)}; validation: {len(split.validation)}.", "",
             f"| method | {head} | " + " | ".join(f"train {lvl}" for lvl in LEVELS) + " | training time |",
             "|---|" + "---|" * (2 * len(LEVELS) + 1)]
    for name, on_train, on_test, minutes in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * x:.1f}" for x in on_test + on_train) + f" | {minutes} |")
    lines += ["", f"| ensemble | {head} |", "|---|" + "---|" * len(LEVELS)]
    for name, test in ensemble_rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * x:.1f}" for x in test) + " |")
    lines += ["", "| paired on the test photos (articleType) | right only by the first | right only by the second | "
              "McNemar exact p |", "|---|---|---|---|"]
    for first, second, only_first, only_second, p in paired_rows:
        lines.append(f"| {first} vs {second} | {only_first} | {only_second} | {p:.3g} |")
    with open(os.path.join(root, filename), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
