r"""Recognise new articles from the command line.

    python -m navee_jax.recognize enroll --workdir=W --references=DIR --gallery=G \
        [--calibration=DIR] [--target_far=0.01] [--checkpoint=best]
    python -m navee_jax.recognize predict --gallery=G IMAGES... | --images=DIR [--top_k=5] [--mode=nn|prototype]
        [--format=csv|json] [--index=exact|faiss] [--workdir=W]
    python -m navee_jax.recognize embed --workdir=W < paths.txt > embeddings.txt
    python -m navee_jax.recognize export --workdir=W --out=DIR
    python -m navee_jax.recognize categorize --workdir=W IMAGES... | --images=DIR [--top_k=5] [--format=csv|json]

enroll: references are `DIR/.../<article>/<image>` (the article is the folder's path under DIR); the "unknown"
threshold is set for the target false-accept rate and stored in the gallery, calibrated on --calibration
(held-out photos laid out the same way, of enrolled and/or other articles) or, without it, by leave-one-out
on the references (each reference against the gallery without it; recall then is optimistic). Enrolling into
an existing gallery skips (and counts) photos already in it: the bytes of an enrolled reference, whatever
the path, so enrolling the same folder twice adds nothing. Symlinked folders are followed.
predict: one row per image, to stdout; the model is the gallery's own checkpoint unless --workdir names
another (which must be the same model). embed: image paths on stdin, one a line; one embedding a line
(space-separated floats) on stdout in the same order. export: the embedding function as serialised StableHLO
and as a TensorFlow SavedModel. categorize: with a classifier workdir (configs/classifier.py), the top-k
classes of each image with their probabilities, one row per image.

An unreadable image gives an error row (predict: error set; article, distance and unknown empty) or a line
of NaNs (embed) and a message on stderr, the others are processed, and the exit status is 1. Bad input
(flags, workdir, gallery) is one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

from navee_jax.cli import fail  # importing navee_jax already quietened TensorFlow

FORMATS = ("csv", "json")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, like every command of this project
        fail(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m navee_jax.recognize", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("enroll", help="embed reference photos into a gallery")
    e.add_argument("--workdir", required=True, help="training workdir, or <workdir>/checkpoints/<step>")
    e.add_argument("--checkpoint", default=None, help="best (default), latest or a saved step")
    e.add_argument("--references", required=True, help="DIR/.../<article>/<image>")
    e.add_argument("--gallery", required=True, help="gallery folder to write (added to when it exists)")
    e.add_argument("--calibration", default=None,
                   help="held-out photos DIR/.../<article>/<image> (default: leave-one-out on the references)")
    e.add_argument("--target_far", type=float, default=0.01, help="false-accept rate of the unknown threshold")
    pr = sub.add_parser("predict", help="top-k articles of each image, or unknown")
    pr.add_argument("--gallery", required=True)
    pr.add_argument("--workdir", default=None, help="default: the checkpoint that made the gallery")
    pr.add_argument("--images", default=None, help="a folder: every image file under it")
    pr.add_argument("--top_k", type=int, default=5)
    pr.add_argument("--mode", choices=("nn", "prototype"), default="nn")
    pr.add_argument("--index", choices=("exact", "faiss"), default="exact",
                    help="faiss: approximate search for very large galleries (needs faiss-cpu)")
    pr.add_argument("--format", choices=FORMATS, default="csv")
    pr.add_argument("paths", nargs="*", metavar="IMAGES")
    em = sub.add_parser("embed", help="embeddings of image paths read from stdin")
    em.add_argument("--workdir", required=True)
    em.add_argument("--checkpoint", default=None)
    ca = sub.add_parser("categorize", help="top-k classes of each image, from a classifier workdir")
    ca.add_argument("--workdir", required=True, help="a method='classifier' training workdir")
    ca.add_argument("--checkpoint", default="best")
    ca.add_argument("--images", default=None, help="a folder: every image file under it")
    ca.add_argument("--top_k", type=int, default=5)
    ca.add_argument("--format", choices=FORMATS, default="csv")
    ca.add_argument("paths", nargs="*", metavar="IMAGES")
    ex = sub.add_parser("export", help="StableHLO + SavedModel of the embedding function")
    ex.add_argument("--workdir", required=True)
    ex.add_argument("--checkpoint", default=None)
    ex.add_argument("--out", required=True)
    return p


def _folder_images(root: str) -> list[str]:
    """Every image file under `root`, symlinked folders followed; folders not entered (symlink loops,
    unreadable) are named on stderr."""
    from navee_jax.data.sources import IMAGE_EXTENSIONS, walk_following_links
    from navee_jax.errors import UserError

    if os.path.isfile(root):
        raise UserError(f"--images: {root!r} is a file, not a folder; pass image files as arguments instead")
    if not os.path.isdir(root):
        raise UserError(f"--images: folder {root!r} does not exist")
    found, skipped = [], []
    for folder, _, files in walk_following_links(root, skipped):
        found += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    if not found:
        raise UserError(f"--images: no image files under {root!r}")
    return found


def _enroll(args) -> int:
    from navee_jax.recognize.api import Recognizer

    rec = Recognizer.load(args.workdir, args.checkpoint)
    if os.path.exists(os.path.join(args.gallery, "gallery.json")):
        rec.load_gallery(args.gallery)
        print(f"adding to gallery {args.gallery} ({len(rec.gallery)} reference images of "
              f"{len(rec.gallery.articles)} articles)")
    before = len(rec.gallery)
    # Photos already in the gallery are skipped and counted in these lines ("already enrolled").
    for line in rec.enroll_folder(args.references, option="--references"):
        print(line)
    g = rec.gallery
    print(f"enrolled {len(g) - before} new reference image(s); the gallery holds {len(g)} reference images of "
          f"{len(g.articles)} articles")
    # Always recalibrated: the gallery may have changed, and the threshold depends on what is enrolled.
    if args.calibration:
        cal = rec.calibrate_folder(args.calibration, args.target_far, option="--calibration")
    else:
        cal = rec.gallery.calibrate_leave_one_out(args.target_far)
    for mode in ("nn", "prototype"):
        c = cal[mode]
        print(f"{mode}: unknown threshold {c['threshold']:.4f} for target FAR {args.target_far}: FAR "
              f"{c['far']:.4f} on {c['negatives']} negatives, recall {c['recall']:.4f} on {c['positives']} "
              f"positives ({cal['source']})")
    rec.save_gallery(args.gallery)
    print(f"wrote {args.gallery}")
    return 0


def _image_arguments(args) -> list[str]:
    from navee_jax.errors import UserError

    if bool(args.images) == bool(args.paths):
        raise UserError(f"{args.command}: give image paths or --images=DIR (one of the two)")
    if args.top_k < 1:
        raise UserError(f"--top_k={args.top_k}: must be >= 1")
    return _folder_images(args.images) if args.images else args.paths


def _predict(args) -> int:
    from navee_jax.errors import UserError
    from navee_jax.recognize.api import Recognizer
    from navee_jax.recognize.gallery import Gallery

    paths = _image_arguments(args)
    gallery = Gallery.load(args.gallery)
    rec = Recognizer.load(args.workdir or gallery.fingerprint["checkpoint"])
    rec.load_gallery(args.gallery)
    if args.index == "faiss":
        from navee_jax.recognize.search import faiss_available

        if not faiss_available():
            raise UserError("--index=faiss needs FAISS: pip install faiss-cpu (or pip install -e '.[faiss]')")
    predictions = rec.predict(paths, k=args.top_k, mode=args.mode, index=args.index)
    rows = [{"image": p.image, "article": p.article if not p.unknown else "unknown",
             "distance": p.distance, "unknown": p.unknown,
             "top_k": [{"article": a, "distance": d} for a, d in p.top_k], "error": p.error}
            for p in predictions]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["image", "article", "distance", "unknown", "top_k", "error"])
        for r in rows:
            w.writerow([r["image"], r["article"] or "", "" if r["distance"] is None else f"{r['distance']:.6f}",
                        "" if r["unknown"] is None else r["unknown"],  # an error row was not judged
                        "|".join(f"{t['article']}:{t['distance']:.6f}" for t in r["top_k"]), r["error"] or ""])
    for p in predictions:
        if p.error:
            print(f"error: {p.image}: {p.error}", file=sys.stderr)
    return 1 if any(p.error for p in predictions) else 0


def _categorize(args) -> int:
    from navee_jax.classify.trained import TrainedClassifier
    from navee_jax.recognize.category import predict_categories

    paths = _image_arguments(args)
    predictions = predict_categories(TrainedClassifier.load(args.workdir, args.checkpoint), paths, args.top_k)
    rows = [{"image": p.image, "category": p.top_k[0][0] if p.top_k else None,
             "probability": p.top_k[0][1] if p.top_k else None,
             "top_k": [{"category": c, "probability": q} for c, q in p.top_k], "error": p.error} for p in predictions]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["image", "category", "probability", "top_k", "error"])
        for r in rows:
            w.writerow([r["image"], r["category"] or "", "" if r["probability"] is None else f"{r['probability']:.6f}",
                        "|".join(f"{t['category']}:{t['probability']:.6f}" for t in r["top_k"]), r["error"] or ""])
    for p in predictions:
        if p.error:
            print(f"error: {p.image}: {p.error}", file=sys.stderr)
    return 1 if any(p.error for p in predictions) else 0


def _embed(args) -> int:
    from navee_jax.recognize.api import Recognizer

    paths = [line.rstrip("\r\n") for line in sys.stdin]
    rec = Recognizer.load(args.workdir, args.checkpoint)
    emb, errors = rec.embed_or_errors(paths) if paths else (None, {})
    for i in range(len(paths)):
        # %.9g round-trips float32 exactly; an unreadable image keeps its line (NaNs) so lines stay aligned.
        print(" ".join("nan" if math.isnan(x) else f"{x:.9g}" for x in emb[i].tolist()))
    for i, why in sorted(errors.items()):
        print(f"error: {paths[i]!r}: {why}", file=sys.stderr)
    return 1 if errors else 0


def _export(args) -> int:
    from navee_jax.recognize.api import Recognizer
    from navee_jax.recognize.export import export_embedding

    rec = Recognizer.load(args.workdir, args.checkpoint)
    for what, path in export_embedding(rec, args.out).items():
        print(f"wrote {what}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from absl import logging

    from navee_jax.errors import UserError

    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    try:
        return {"enroll": _enroll, "predict": _predict, "embed": _embed, "export": _export,
                "categorize": _categorize}[args.command](args)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
