r"""How much of a trained Omniglot embedding's error is the alphabets it never saw: the same 1-NN episodes on the
held-out characters and on as many training characters (upright, all 20 drawings each), side by side
(docs/omniglot.md).

    python bench/omniglot_seen_vs_unseen.py runs/omniglot/triplet [more workdirs] \
        [--features=embedding|backbone|backbone_l2] [--tta-shift-px=1]

The workdir is a `:omniglot_background` run (its splits.json names the held-out characters); the training
characters are drawn by seed 0 from the alphabets it trained on. Each character's first 10 drawings are its
support pool and the other 10 its queries; `navee_jax.evaluate.fewshot.few_shot_grid` (the evaluator's), 600
episodes a cell, 10 queries per class, 1-NN. `--features=backbone` ranks by the backbone's features before the
embedding head (`backbone_l2`: L2-normalised), to see whether the head helps. `--tta-shift-px` embeds each
image as the mean over its 9 shifts (`model.tta_shift_px`), whatever the run was trained with. Several workdirs
(trained on the same split) are an ensemble: each image's features are the concatenation of every run's,
L2-normalised (for unit-vector embeddings: ranking by the mean of the runs' squared distances).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs.common import OMNIGLOT_BACKGROUND  # noqa: E402
from navee_jax.evaluate.fewshot import few_shot_grid  # noqa: E402

WAYS, SHOTS = (5, 20), (1, 5)


def recognizer(workdir: str, features: str, tta_shift_px: int | None):
    from flax import nnx

    from navee_jax.recognize.api import Recognizer

    rec = Recognizer.load(workdir)
    if features == "embedding" and tta_shift_px is None:
        return rec
    model = nnx.merge(rec.graphdef, rec.params, rec.rest)
    if features != "embedding":
        model.head, model.out_features = None, model.backbone.out_features
        model.normalize = rec.config.model.normalize = features == "backbone_l2"
    if tta_shift_px is not None:
        rec.config.model.tta_shift_px = tta_shift_px
    return Recognizer(rec.config, model, rec.fingerprint["checkpoint"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--features", default="embedding", choices=("embedding", "backbone", "backbone_l2"))
    p.add_argument("--tta-shift-px", type=int, default=None, help="0: none; default: the run's own setting")
    a = p.parse_args()
    if not os.path.isdir(OMNIGLOT_BACKGROUND):
        sys.exit(f"skipped: {OMNIGLOT_BACKGROUND} is absent (Omniglot's background set, ../shared/data)")
    splits = [json.load(open(os.path.join(w, "splits.json")))["heldout_classes"] for w in a.workdirs]
    if any(s != splits[0] for s in splits):
        sys.exit("the workdirs hold out different characters: an ensemble needs runs on the same split")
    heldout = splits[0]
    heldout_alphabets = {c.split("/")[0] for c in heldout}
    characters = sorted(os.path.relpath(d, OMNIGLOT_BACKGROUND) for d in glob.glob(f"{OMNIGLOT_BACKGROUND}/*/*"))
    seen = [c for c in characters if c.split("/")[0] not in heldout_alphabets]
    seen = list(np.random.default_rng(0).choice(seen, len(heldout), replace=False))
    recs = [recognizer(w, a.features, a.tta_shift_px) for w in a.workdirs]
    shifts = [rec.config.model.tta_shift_px for rec in recs]
    print(f"{' + '.join(a.workdirs)} ({a.features}, test-time shifts {shifts} px); 1-NN accuracy %, 600 episodes, "
          f"10 queries per class")
    print("| characters | " + " | ".join(f"{w}-way {k}-shot" for w in WAYS for k in SHOTS) + " |")
    print("|---|" + "---|" * len(WAYS) * len(SHOTS))
    for name, chars in ((f"{len(heldout)} held-out (unseen alphabets)", heldout),
                        (f"{len(seen)} training characters, upright", seen)):
        paths, labels, support = [], [], []
        for i, c in enumerate(chars):
            files = sorted(glob.glob(os.path.join(OMNIGLOT_BACKGROUND, c, "*.png")))
            paths += files
            labels += [i] * len(files)
            support += [j < len(files) // 2 for j in range(len(files))]
        embeddings = np.concatenate([np.asarray(rec.embed(paths)) for rec in recs], axis=1)
        if len(recs) > 1:
            embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        labels, support = np.asarray(labels), np.asarray(support)
        cells = few_shot_grid(embeddings[support], labels[support], embeddings[~support], labels[~support],
                              ways=WAYS, shots=SHOTS, queries=10, episodes=600)
        print(f"| {name} | " + " | ".join(f"{100 * c.mean:.2f} +- {100 * c.ci95:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
