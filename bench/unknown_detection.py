"""Unknown detection on Omniglot: false-accept rate at the calibrated threshold vs its target, and recall.

    python bench/unknown_detection.py --workdir=runs/triplet-omniglot [--target_far 0.01 0.05 0.1]

For a workdir trained with an `:omniglot` config (Korean alphabet, 10 characters held out): the held-out
characters' support images are enrolled (10 articles); the threshold is calibrated on the first half of
their query images (by file order) plus the Balinese alphabet (never enrolled, never trained on); the
false-accept rate is then measured on the Early Aramaic alphabet (other unknown articles, disjoint from
calibration), and recall (accepted with the correct article) on the other half of the enrolled characters'
query images. Both prediction modes (nearest reference image, nearest prototype). Reads ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from navee_jax.data.sources import folder_catalogue  # noqa: E402
from navee_jax.recognize import Gallery, Recognizer  # noqa: E402

OMNIGLOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "data",
                        "omniglot", "images_background_small1")


def alphabet(name: str) -> tuple[list[str], list[str]]:
    cat = folder_catalogue(os.path.join(OMNIGLOT, name))
    return list(cat.paths), [f"{name}/{cat.class_names[c]}" for c in cat.labels]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--target_far", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    a = p.parse_args()
    rec = Recognizer.load(a.workdir)
    with open(os.path.join(a.workdir, "splits.json")) as f:
        split = json.load(f)
    article = lambda path: os.path.basename(os.path.dirname(path))  # noqa: E731
    q_art = np.array([article(x) for x in split["query"]])
    first = np.concatenate([np.flatnonzero(q_art == c)[:len(np.flatnonzero(q_art == c)) // 2]
                            for c in np.unique(q_art)])
    second = np.setdiff1d(np.arange(len(q_art)), first)
    bal_paths, bal_art = alphabet("Balinese")
    ara_paths, _ = alphabet("Early_Aramaic")
    support = rec.embed(split["support"])
    query = rec.embed(split["query"])
    balinese, aramaic = rec.embed(bal_paths), rec.embed(ara_paths)
    cal_emb = np.concatenate([query[first], balinese])
    cal_labels = list(q_art[first]) + bal_art
    print(f"{rec.fingerprint['checkpoint']}: enrolled {len(split['support'])} images of {len(set(q_art))} "
          f"characters; calibration {len(first)} enrolled-character + {len(bal_paths)} Balinese images; "
          f"measured on {len(ara_paths)} Early Aramaic (unknown) and {len(second)} enrolled-character images")
    print(f"{'mode':10s} {'target FAR':>10s} {'threshold':>9s} {'cal. FAR':>8s} {'measured FAR':>12s} "
          f"{'accepted':>8s} {'recall':>7s}")
    for mode in ("nn", "prototype"):
        for target in a.target_far:
            rec.gallery = Gallery(rec.dim, rec.fingerprint)
            rec.gallery.add(support, [article(x) for x in split["support"]])
            cal = rec.gallery.calibrate(cal_emb, cal_labels, target)[mode]
            unknown = rec.predict_embeddings(aramaic, k=1, mode=mode)
            known = rec.predict_embeddings(query[second], k=1, mode=mode)
            far = np.mean([not x.unknown for x in unknown])
            accepted = np.mean([not x.unknown for x in known])
            recall = np.mean([x.article == c for x, c in zip(known, q_art[second])])
            print(f"{mode:10s} {target:10.3f} {cal['threshold']:9.4f} {cal['far']:8.4f} {far:12.4f} "
                  f"{accepted:8.4f} {recall:7.4f}")


if __name__ == "__main__":
    main()
