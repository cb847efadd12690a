"""`launch.py --mode=evaluate` on a classifier workdir: accuracy at each label level on train / validation /
test (the study's tables 1-2 show train and test), per-class test accuracy, the confusion matrix and the
misclassified test images (its figure 14), into `workdir/report/` (report.json, report.md, figures)."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from sklearn.metrics import confusion_matrix

from navee_jax.classify.evaluator import LevelScorer
from navee_jax.classify.trained import TrainedClassifier
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.splits import Split
from navee_jax.evaluate.classification_figures import confusion_matrix_figure, misclassified_examples

MISCLASSIFIED_SHOWN = 18


def write_classifier_report(config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split, workdir: str,
                            checkpoint: str) -> dict:
    classifier = TrainedClassifier.load(workdir, checkpoint)
    report_dir = os.path.join(workdir, "report")
    os.makedirs(report_dir, exist_ok=True)
    names = catalogue.class_names
    parts = {"train": split.train, "validation": split.validation, "test": split.test}
    probs = {part: classifier.probabilities(catalogue, idx) for part, idx in parts.items() if len(idx)}
    score = LevelScorer(catalogue, split.train)
    scores = {part: score(p.argmax(1), parts[part]) for part, p in probs.items()}
    test_pred, test_true = probs["test"].argmax(1), catalogue.labels[split.test]
    counts = confusion_matrix(test_true, test_pred, labels=np.arange(len(names)))
    per_class = [{"class": names[c], "test_images": int(counts[c].sum()), "correct": int(counts[c, c]),
                  "accuracy": float(counts[c, c] / counts[c].sum())} for c in range(len(names)) if counts[c].sum()]
    per_class.sort(key=lambda r: (r["accuracy"], r["class"]))
    figures = {"confusion matrix (test)": confusion_matrix_figure(
        counts, names, os.path.join(report_dir, "confusion_matrix.png"),
        f"{config.data.label_column}: test confusion matrix (rows sum to 1)")}
    wrong = np.flatnonzero(test_pred != test_true)
    if len(wrong):
        shown = np.sort(np.random.default_rng(config.seed).choice(wrong, min(MISCLASSIFIED_SHOWN, len(wrong)),
                                                                  replace=False))
        images = np.concatenate(list(eval_batches(catalogue, split.test[shown], config.data, 64)))
        figures["misclassified test images"] = misclassified_examples(
            images, [names[c] for c in test_true[shown]], [names[c] for c in test_pred[shown]],
            probs["test"][shown, test_pred[shown]], os.path.join(report_dir, "misclassified.png"),
            title=f"misclassified test images ({len(shown)} of {len(wrong)}, drawn by the seed)")
    result = {"checkpoint": classifier.checkpoint, "label_column": config.data.label_column, "accuracy": scores,
              "per_class_test": per_class, "figures": {k: os.path.basename(v) for k, v in figures.items()}}
    with open(os.path.join(report_dir, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(report_dir, "report.md"), "w") as f:
        f.write(_markdown(result, {p: len(i) for p, i in parts.items()}) + "\n")
    for part, by_level in scores.items():
        print(f"{part} accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in by_level.items()))
    print(f"wrote {report_dir}/report.md")
    return result


def _markdown(result: dict, sizes: dict[str, int]) -> str:
    levels = list(next(iter(result["accuracy"].values())))
    named = [result["label_column"] if lvl == "class" else lvl for lvl in levels]
    lines = [f"# Classifier report: {result['label_column']}", "", f"Checkpoint: `{result['checkpoint']}`", "",
             "| part | images | " + " | ".join(named) + " |", "|---|---|" + "---|" * len(levels)]
    for part, by_level in result["accuracy"].items():
        lines.append(f"| {part} | {sizes[part]} | " + " | ".join(f"{100 * by_level[lvl]:.2f}" for lvl in levels)
                     + " |")
    lines += ["", "Coarser levels read each predicted class as the level most of its training images carry.", "",
              "## Per-class test accuracy (worst first)", "", "| class | test images | correct | accuracy |",
              "|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['test_images']} | {r['correct']} | {100 * r['accuracy']:.1f} |"
              for r in result["per_class_test"]]
    lines += ["", "## Figures", ""] + [f"- {k}: ![{k}]({v})" for k, v in result["figures"].items()]
    return "\n".join(lines)
