r"""Inspect a config's data without training: the catalogue, its split and the images-per-class histogram.

    python -m navee_jax.data describe --config=configs/triplet.py [--config.a.b=value ...] [--workdir=DIR]

prints the catalogue (images, classes, groups), the train / support / query / unused parts of the split,
the exact duplicates kept and excluded (with --config.data.duplicates=keep), a text histogram of images
per class with min / median / max, and the skipped files by reason; and writes the histogram to
<workdir>/images_per_class.png (workdir default: runs/describe).

Bad input (unknown subcommand or config key, wrong type, missing data) ends with one line on stderr
naming the culprit, and exit status 2.
"""

import functools
import os

from absl import app, flags, logging
from ml_collections import config_flags

from navee_jax.cli import fail, parse_flags  # importing navee_jax already quietened TensorFlow

SUBCOMMANDS = ("describe",)
DEFAULT_WORKDIR = os.path.join("runs", "describe")
PNG_NAME = "images_per_class.png"

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/triplet.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, f"Where the histogram PNG goes (default {DEFAULT_WORKDIR}).")


def _usage_problem(argv: list[str]) -> str | None:
    if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        got = repr(argv[1]) if len(argv) > 1 else "nothing"
        return (f"expected a subcommand first, one of {list(SUBCOMMANDS)} (got {got}), e.g. "
                f"python -m navee_jax.data describe --config=configs/triplet.py")
    return None


def main(argv: list[str]) -> None:
    if len(argv) > 2:
        fail(f"unexpected arguments {argv[2:]}; overrides look like --config.data.source=folder")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    workdir = _WORKDIR.value or DEFAULT_WORKDIR

    from navee_jax.data.describe import describe, images_per_class, save_histogram_png
    from navee_jax.data.sources import load_catalogue
    from navee_jax.data.splits import make_split, split_seed
    from navee_jax.errors import UserError

    try:
        catalogue = load_catalogue(config.data)
        split = make_split(catalogue, config.split, split_seed(config))
    except UserError as e:
        fail(str(e))
    path = os.path.join(workdir, PNG_NAME)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        fail(f"--workdir: cannot create {workdir!r}: {e.strerror or e}")

    for line in describe(catalogue, split):
        print(line)
    counts = images_per_class(catalogue.labels, len(catalogue.class_names))
    try:
        save_histogram_png(counts, path, title=f"Images per class: {catalogue.name} ({len(counts)} classes)")
    except OSError as e:
        fail(f"--workdir: cannot write {path!r}: {e.strerror or e}")
    print(f"histogram written to {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=functools.partial(parse_flags, usage_problem=_usage_problem))
