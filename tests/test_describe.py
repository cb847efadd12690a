"""`python -m navee_jax.data describe`: images-per-class counts, the histogram, the split summary, the CLI."""

import collections
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs import common
from conftest import REPO, write_image
from navee_jax.data.describe import (describe, histogram_bins, histogram_edges, images_per_class,
                                     save_histogram_png, text_histogram)
from navee_jax.data.sources import digits_catalogue, folder_catalogue
from navee_jax.data.splits import make_split


def run_describe(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "navee_jax.data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _part_line(stdout: str, part: str) -> tuple[int, int]:
    """(classes, images) of a split part's line."""
    m = re.search(rf"^\s+{part}\s+(\d+) classes\s+(\d+) images$", stdout, re.MULTILINE)
    assert m, f"no {part} line in:\n{stdout}"
    return int(m.group(1)), int(m.group(2))


def _histogram_numbers(lines: list[str]) -> list[int]:
    """The number of classes at the end of each `range | ### n` line."""
    return [int(line.rsplit(" ", 1)[1]) for line in lines if " | " in line]


def test_images_per_class_matches_counter():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=500)
    labels = labels[labels != 3]  # class 3 has no images: still counted, as 0
    ref = collections.Counter(labels.tolist())
    counts = images_per_class(labels, num_classes=9)
    assert counts.tolist() == [ref.get(c, 0) for c in range(9)]
    assert counts[3] == 0 and counts[7] == counts[8] == 0 and counts.sum() == len(labels)
    with pytest.raises(ValueError):
        images_per_class(np.array([0, 5]), num_classes=5)


@pytest.mark.parametrize("counts", [
    np.full(12, 20),                                            # all classes the same size (Omniglot)
    np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),  # digits
    np.random.default_rng(1).integers(0, 100, size=300),        # wide, includes 0: equal widths
    np.random.default_rng(2).lognormal(2.5, 1.5, size=400).astype(int) + 1,  # long tail: geometric widths
    np.array([1, 2, 3, 5000]),
])
@pytest.mark.parametrize("max_bins", [1, 5, 12])
def test_histogram_bins_cover_every_class_once(counts, max_bins):
    edges, per_bin = histogram_bins(counts, max_bins)
    assert np.all(np.diff(edges) >= 1) and edges.dtype.kind == "i"
    assert 1 <= len(per_bin) <= max_bins and len(per_bin) == len(edges) - 1
    assert edges[0] <= counts.min() and edges[-1] > counts.max()
    # Reference: count by hand which counts fall in [edges[i], edges[i+1]).
    by_hand = [sum(1 for c in counts.tolist() if lo <= c < hi) for lo, hi in zip(edges[:-1], edges[1:])]
    assert per_bin.tolist() == by_hand
    assert per_bin.sum() == len(counts)
    np.testing.assert_array_equal(histogram_edges(counts, max_bins), edges)


def test_long_tail_gets_geometric_bins():
    edges = histogram_edges(np.array([1, 2, 3, 40, 5000]), max_bins=12)
    widths = np.diff(edges)
    assert widths[0] == 1 and widths[-1] > 1000 and np.all(np.diff(widths) >= 0)
    widths = np.diff(histogram_edges(np.arange(5, 101), max_bins=12))  # max = 20 x min: still a long tail
    assert widths[0] <= 2 and widths[-1] >= 15
    # Without a long tail (max < 16 x min), equal widths.
    assert len(set(np.diff(histogram_edges(np.arange(100, 1000), max_bins=12)).tolist())) == 1


def test_text_histogram_bars_and_numbers():
    counts = np.array([1] * 4 + [2] * 10 + [3] * 5 + [7])
    lines = text_histogram(counts, max_bins=12, width=20)
    assert len(lines) == 7  # one bin per value 1..7
    assert _histogram_numbers(lines) == [4, 10, 5, 0, 0, 0, 1]
    bars = [line.split(" | ")[1].count("#") for line in lines]
    assert bars[1] == 20 and bars[0] == 8 and bars[2] == 10  # proportional to the largest bin
    assert bars[3:6] == [0, 0, 0] and bars[6] >= 1  # a non-empty bin is never invisible
    assert [line.split(" | ")[0].strip() for line in lines] == ["1", "2", "3", "4", "5", "6", "7"]
    tiny = text_histogram(np.array([1] * 100 + [2]), width=20)
    assert [line.split(" | ")[1].count("#") for line in tiny] == [20, 1]  # 1/100 of the width still shows
    wide = text_histogram(np.arange(100), max_bins=4)
    assert [line.split(" | ")[0].strip() for line in wide] == ["0-24", "25-49", "50-74", "75-99"]
    assert _histogram_numbers(wide) == [25, 25, 25, 25]


def test_describe_digits_matches_independent_counts():
    cfg = common.get_config("digits")
    cat = digits_catalogue()
    split = make_split(cat, cfg.split, cfg.seed)
    lines = describe(cat, split)
    text = "\n".join(lines)
    target = load_digits().target  # independent of the catalogue
    assert f"{len(target)} images, {len(set(target.tolist()))} classes" in lines[0]
    for part in ("train", "support", "query", "unused"):
        idx = getattr(split, part)
        assert _part_line(text, part) == (len(set(target[idx].tolist())), len(idx))
    assert _part_line(text, "train") == (6, len(split.train))
    per_class = collections.Counter(target.tolist()).values()
    assert (f"min {min(per_class)}, median {np.median(list(per_class)):g}, max {max(per_class)}") in text
    assert sum(_histogram_numbers(lines)) == 10
    assert "skipped: none" in text and "groups: none" in text


def test_describe_folder_with_groups_and_skipped_files(tmp_path):
    root = tmp_path / "shop"
    sizes = {("brandA", "shirt"): 3, ("brandA", "shoe"): 5, ("brandB", "bag"): 4, ("brandB", "hat"): 2}
    for seed, ((brand, article), n) in enumerate(sizes.items()):
        (root / brand / article).mkdir(parents=True)
        for i in range(n):
            write_image(str(root / brand / article / f"{i}.png"), seed=100 * seed + i)
    shutil.copy(root / "brandA" / "shoe" / "0.png", root / "brandA" / "shoe" / "copy.png")  # duplicate
    (root / "brandB" / "bag" / "notes.txt").write_text("not an image")
    cat = folder_catalogue(str(root), group_level=0)
    cfg = common.get_config("digits").split
    cfg.mode, cfg.heldout_groups = "groups", ("brandB",)
    split = make_split(cat, cfg, seed=0)
    lines = describe(cat, split)
    text = "\n".join(lines)

    assert "14 images, 4 classes" in lines[0]
    assert "groups: 2 (brandA, brandB)" in text and "groups unseen in training: brandB" in text
    assert _part_line(text, "train") == (2, 8)
    assert _part_line(text, "support")[1] + _part_line(text, "query")[1] == 6
    assert "min 2, median 3.5, max 5" in text
    assert _histogram_numbers(lines) == [1, 1, 1, 1]  # one class each with 2, 3, 4 and 5 images
    assert {r: len(v) for r, v in cat.skipped_by_reason().items()} == {"duplicate": 1, "unsupported file": 1}
    assert "skipped: 2 file(s)/folder(s) (1 duplicate, 1 unsupported file)" in text


def _bars_in_png(path) -> int:
    """Number of separate bars (runs of matplotlib's tab:blue) across the row just above the x axis."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB")).astype(int)
    blue = np.abs(rgb - [31, 119, 180]).sum(-1) < 30
    row = blue[np.flatnonzero(blue.any(1))[-1]]  # the lowest row with any bar in it
    return int(np.sum(row[1:] & ~row[:-1]) + row[0])


@pytest.mark.parametrize("counts, bars", [([5, 5, 5], 1), ([1, 2, 3, 4], 4), ([1, 1, 3, 3, 3], 2)])
def test_save_histogram_png_draws_one_bar_per_non_empty_bin(tmp_path, counts, bars):
    path = tmp_path / "h.png"
    save_histogram_png(np.array(counts), str(path))
    assert _bars_in_png(path) == bars


def test_cli_describe_digits(tmp_path):
    r = run_describe(["describe", "--config=configs/triplet.py:digits", f"--workdir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1797 images, 10 classes" in r.stdout
    assert _part_line(r.stdout, "train") == (6, int(np.sum(load_digits().target < 6)))
    png = tmp_path / "images_per_class.png"
    assert f"histogram written to {png}" in r.stdout
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0


@pytest.mark.parametrize("args, culprit", [
    (["describe", "--config=configs/triplet.py:digits", "--config.split.heldout_clases=()"],
     "unknown config key 'split.heldout_clases' (did you mean 'split.heldout_classes'?)"),
    (["describe", "--config=configs/triplet.py:digits", "--config.seed=zero"], "config key 'seed' expects int"),
    (["summary", "--config=configs/triplet.py:digits"], "one of ['describe'] (got 'summary')"),
    (["--config=configs/triplet.py:digits"], "expected a subcommand"),
    (["describe", "--config=configs/nope.py"], "configs/nope.py"),
    (["describe", "--config=configs/triplet.py:digits", "--config.data.source=folder", "--config.data.root=/no/such"],
     "data.root: folder '/no/such' does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, culprit):
    r = run_describe([*args, f"--workdir={tmp_path / 'out'}"])
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert culprit in err
    assert r.stdout == "" and not (tmp_path / "out").exists()
