import json
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from navee_jax.evaluate import figures
from navee_jax.evaluate.records import FewShotCell
from navee_jax.evaluate.report import write_report


def _png(path) -> np.ndarray:
    """The PNG at `path` as (H, W, 3) uint8, after checking it is a valid PNG of a readable size."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert 150 <= im.width <= 1600 and 100 <= im.height <= 1600, im.size
        return np.asarray(im.convert("RGB"))


def _rgb255(colour: str) -> np.ndarray:
    return np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)


def _mask(pixels: np.ndarray, colour: str, tol: int = 2) -> np.ndarray:
    return (np.abs(pixels.astype(int) - _rgb255(colour)) <= tol).all(axis=-1)


def _cell(ways, shots, mean, ci95=0.01):
    """An evaluated cell in the records' dict form, as the evaluation writes it."""
    return FewShotCell(ways, shots, "1nn", mean, ci95, episodes=600, queries_per_class=15).to_dict()


GRID = [_cell(5, 1, 0.8), _cell(5, 5, 0.9), _cell(10, 1, 0.6),
        FewShotCell.skip(10, 5, "1nn", 600, "needs 5 support images per class; the smallest class has 3").to_dict()]


def test_heatmap_draws_the_skipped_cell_grey_and_hatched(tmp_path):
    skipped, full = str(tmp_path / "skipped.png"), str(tmp_path / "full.png")
    figures.accuracy_heatmap(GRID, skipped, title="digits")
    figures.accuracy_heatmap(GRID[:3] + [_cell(10, 5, 0.7)], full, title="digits")
    with_na, without = _png(skipped), _png(full)
    assert with_na.shape == without.shape and not np.array_equal(with_na, without)
    grey, hatch = _mask(with_na, figures.SKIPPED_FACE), _mask(with_na, figures.SKIPPED_HATCH, tol=30)
    # The skipped cell (10-way 5-shot: bottom row, right column) is a large grey area with hatch lines...
    assert grey.sum() > 1500 and hatch.sum() > 100 and _mask(without, figures.SKIPPED_FACE).sum() < 50
    # ... lying below and to the right of the coloured (viridis) cells.
    coloured = (with_na.max(axis=-1).astype(int) - with_na.min(axis=-1)) > 60
    rows, cols = np.nonzero(grey)
    c_rows, c_cols = np.nonzero(coloured)
    assert rows.mean() > np.median(c_rows) and cols.mean() > np.median(c_cols)
    # Same input, same bytes.
    again = str(tmp_path / "again.png")
    figures.accuracy_heatmap(GRID, again, title="digits")
    assert open(again, "rb").read() == open(skipped, "rb").read()


def test_distance_histograms_and_pair_distances(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 500)
    emb = 10 * np.eye(6)[labels] + rng.normal(0, 0.05, (len(labels), 6))  # classes far apart
    pos, neg = figures.pair_distances(emb, labels, max_pairs=4000, seed=3)
    assert len(pos) == len(neg) == 4000
    assert pos.max() < 1.0 and neg.min() > 13.0  # every sampled pair is of the kind it is reported as
    again = figures.pair_distances(emb, labels, max_pairs=4000, seed=3)
    np.testing.assert_array_equal(again[0], pos)
    np.testing.assert_array_equal(again[1], neg)
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    figures.distance_histograms(pos, neg, a)
    figures.distance_histograms(pos, neg[:100] - 5, b)
    assert not np.array_equal(_png(a), _png(b))


def test_pair_distances_small_sets_are_exact():
    rng = np.random.default_rng(1)
    emb, labels = rng.normal(size=(12, 3)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    pos, neg = figures.pair_distances(emb, labels, max_pairs=100)
    full = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    i, j = np.triu_indices(12, 1)
    same = labels[i] == labels[j]
    np.testing.assert_allclose(pos, full[i, j][same])
    np.testing.assert_allclose(neg, full[i, j][~same])
    assert len(pos) == 3 + 1 + 6 + 3


def test_pca_scatter_draws_one_colour_per_drawn_class(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 30)
    emb = rng.normal(size=(8, 16))[labels] * 4 + rng.normal(size=(len(labels), 16))
    names = [f"class {c}" for c in range(8)]
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    figures.pca_scatter(emb, labels, a, num_classes=3, seed=0, class_names=names)
    figures.pca_scatter(emb, labels, b, num_classes=3, seed=1, class_names=names)
    pixels = _png(a)
    # C7 is tab10's grey, which antialiased black text also produces; the other colours are the classes'.
    present = [k for k in range(10) if k != 7 and _mask(pixels, f"C{k}", tol=0).sum() > 20]
    assert present == [0, 1, 2]
    assert not np.array_equal(pixels, _png(b))  # another seed draws other classes
    with pytest.raises(ValueError, match="num_classes"):
        figures.pca_scatter(emb, labels, a, num_classes=11)


def test_training_curves(tmp_path):
    history = [{"epoch": e, "step": 10 * e, "map": 0.5 + 0.05 * e, "loss": 1.0 / e} for e in range(1, 6)]
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    figures.training_curves(history, a)
    figures.training_curves(history[:3] + [{"epoch": 4, "map": 0.4, "loss": None}], b)
    assert not np.array_equal(_png(a), _png(b))


def test_nearest_neighbours_frames_correct_green_and_wrong_red(tmp_path):
    rng = np.random.default_rng(0)
    support_emb, support_labels = rng.normal(size=(40, 8)), np.repeat(np.arange(4), 10)
    query_emb, query_labels = support_emb[::4] + 0.01, support_labels[::4]
    ex = figures.nearest_neighbour_examples(query_emb, query_labels, support_emb, support_labels, k=4,
                                            num_queries=3, seed=0)
    d = np.sqrt(((query_emb[ex["query"], None] - support_emb[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(ex["neighbours"], np.argsort(d, axis=1)[:, :4])
    np.testing.assert_array_equal(ex["correct"], support_labels[ex["neighbours"]] == query_labels[ex["query"], None])
    assert ex["correct"][:, 0].all()  # each query's nearest image is the one it was made from
    images = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    shown = [images[ex["query"]], images[ex["neighbours"]], ex["distances"]]
    mixed, right = str(tmp_path / "mixed.png"), str(tmp_path / "right.png")
    figures.nearest_neighbours(*shown, np.array([[True, False, True, False]] * 3), mixed)
    figures.nearest_neighbours(*shown, np.ones((3, 4), bool), right)
    mixed_px, right_px = _png(mixed), _png(right)
    assert _mask(mixed_px, figures.CORRECT_COLOUR).sum() > 100 and _mask(mixed_px, figures.WRONG_COLOUR).sum() > 100
    assert _mask(right_px, figures.CORRECT_COLOUR).sum() > 100 and _mask(right_px, figures.WRONG_COLOUR).sum() == 0


RESULTS = {
    "meta": {"dataset": "digits", "heldout_classes": "6, 7, 8, 9", "seed": 0},
    "sources": {
        "trained embedding": {
            "retrieval": {"map": 0.73, "map_at_r": np.float32(0.5), "recall_at_1": 0.9, "queries_scored": 180},
            "standard": [_cell(5, 1, 0.8), _cell(5, 5, 0.95, 0.005)],
            "grid": GRID,
        },
        "HOG + 1-NN": {
            "note": "skimage HOG | 8x8 cells",
            "retrieval": {"map": 0.61, "custom_metric": np.int64(3)},
            "standard": [_cell(5, 1, 0.7), FewShotCell.skip(5, 5, "1nn", 600, "too few | 3 images").to_dict()],
        },
        "raw pixels + 1-NN": {},
    },
}


def test_report_tables_links_and_round_trip(tmp_path):
    report_dir = str(tmp_path / "report")
    heatmap = str(tmp_path / "report" / "figures" / "grid.png")
    json_path, md_path = write_report(report_dir, RESULTS, {"N x K grid": heatmap, "curves": "/elsewhere/c.png"})
    md = open(md_path, encoding="utf-8").read()
    for row in ["| feature source | mAP | MAP@R | Recall@1 | 5-way 1-shot, 1nn | 5-way 5-shot, 1nn |",
                "| trained embedding | 0.7300 | 0.5000 | 0.9000 | 0.8000 ± 0.0100 | 0.9500 ± 0.0050 |",
                "| HOG + 1-NN | 0.6100 | - | - | 0.7000 ± 0.0100 | n/a (too few \\| 3 images) |",
                "| raw pixels + 1-NN | - | - | - | - | - |",
                "| mAP | 0.7300 |", "| MAP@R | 0.5000 |", "| queries scored | 180 |", "| custom_metric | 3 |",
                "| 5-way 1-shot, 1nn | 0.8000 ± 0.0100 | 600 |",
                "| N \\ K | 1 | 5 |",
                "| 5 | 0.8000 ± 0.0100 | 0.9000 ± 0.0100 |",
                "| 10 | 0.6000 ± 0.0100 | n/a (needs 5 support images per class; the smallest class has 3) |",
                "skimage HOG | 8x8 cells",
                "![N x K grid](figures/grid.png)", "- dataset: digits"]:
        assert row in md.splitlines(), row
    assert md.index("## trained embedding") < md.index("## HOG + 1-NN") < md.index("## raw pixels + 1-NN")
    assert md.split("## raw pixels + 1-NN\n\n")[1].startswith("No results.\n")
    rel_curves = os.path.relpath("/elsewhere/c.png", os.path.abspath(report_dir))
    saved = json.load(open(json_path))
    expected = json.loads(json.dumps({**RESULTS, "figures": {"N x K grid": "figures/grid.png", "curves": rel_curves}},
                                     default=lambda x: x.item()))
    assert saved == expected
    assert saved["sources"]["trained embedding"]["retrieval"]["map"] == 0.73  # floats exactly as given

    first = open(json_path, "rb").read(), open(md_path, "rb").read()
    write_report(report_dir, RESULTS, {"N x K grid": heatmap, "curves": "/elsewhere/c.png"})
    assert (open(json_path, "rb").read(), open(md_path, "rb").read()) == first
    with pytest.raises(ValueError, match="figures"):
        write_report(report_dir, {**RESULTS, "figures": {}}, {})


def test_grid_average_is_the_mean_of_cell_means_with_the_interval_of_independent_cells(tmp_path):
    from navee_jax.evaluate.records import grid_average

    rng = np.random.default_rng(0)
    runs = [rng.random(n) for n in (40, 60, 90)]  # per-episode accuracies of three cells
    cells = [FewShotCell.from_accuracies(5, k, "1nn", acc, 15).to_dict() for k, acc in zip((1, 2, 3), runs)]
    cells.append(GRID[-1])  # a skipped cell counts for nothing
    average = grid_average(cells)
    # the reference from the raw episodes: the mean of the means has variance sum(var_i / E_i) / n^2
    want_ci = 1.96 * np.sqrt(sum(a.var(ddof=1) / len(a) for a in runs)) / 3
    assert average == pytest.approx({"mean": np.mean([a.mean() for a in runs]), "ci95": want_ci, "cells": 3})
    assert grid_average([GRID[-1]]) is None
    md = open(write_report(str(tmp_path), {"sources": {"net": {"grid": cells}}}, {})[1]).read()
    assert f"Grid average: {average['mean']:.4f} ± {average['ci95']:.4f} over 3 cells." in md
