"""Sweeps: parsing and type checks, the grid, and a two-setting sweep through launch.py."""

import json
import re

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from configs import triplet
from conftest import TINY, run_launch
from navee_jax.errors import UserError
from navee_jax.evaluate import figures
from navee_jax.evaluate.figures import sweep_curve, sweep_points
from navee_jax.launcher.sweep import parse_sweep, run_sweep, setting_name, settings


def test_sweep_values_are_typed_like_the_config_and_form_a_grid():
    cfg = triplet.get_config("digits")
    axes = parse_sweep(["optim.lr=[5e-5, 1]", "model.backbone=['conv4', 'resnet18']",
                        "eval.shots=[[1], [1, 5]]"], cfg)
    assert axes == [("optim.lr", [5e-5, 1.0]), ("model.backbone", ["conv4", "resnet18"]),
                    ("eval.shots", [(1,), (1, 5)])]
    assert isinstance(axes[0][1][1], float)  # an int literal for a float key becomes a float
    grid = settings(axes)
    assert len(grid) == 2 * 2 * 2 and grid[0] == {"optim.lr": 5e-5, "model.backbone": "conv4", "eval.shots": (1,)}
    assert grid[-1] == {"optim.lr": 1.0, "model.backbone": "resnet18", "eval.shots": (1, 5)}
    assert len({setting_name(s) for s in grid}) == len(grid)  # distinct sub-workdirs
    assert setting_name({"optim.lr": 5e-5, "model.backbone": "conv4"}) == "optim.lr=5e-05,model.backbone='conv4'"


@pytest.mark.parametrize("spec,message", [
    ("optim.lrr=[1e-3]", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("optim.lr=1e-3", "must be a non-empty list"),
    ("optim.lr=[fast]", "must be a Python list literal"),
    ("optim.lr=['fast']", "config key 'optim.lr' expects float (default 0.001), got 'fast'"),
    ("optim.lr", "expected key=[value, ...]"),
])
def test_bad_sweeps_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_sweep([spec], triplet.get_config("digits"))


def test_run_sweep_trains_each_setting_in_its_own_workdir_and_tabulates(tmp_path):
    seen = []

    def fake_train(cfg, workdir):  # the table must come from what each run returned
        seen.append((cfg.optim.lr, workdir))
        history = [{"epoch": 1, "map": 0.1 + cfg.optim.lr}, {"epoch": 2, "map": 0.05}]
        return {"best_epoch": max(history, key=lambda h: h["map"]), "final": {"map": 0.05}, "initial": {"map": 0.01},
                "history": history}

    rows = run_sweep(triplet.get_config("digits"), str(tmp_path), [("optim.lr", [0.5, 0.25])], fake_train)
    assert seen == [(0.5, str(tmp_path / "optim.lr=0.5")), (0.25, str(tmp_path / "optim.lr=0.25"))]
    assert [r["best_map"] for r in rows] == [0.6, 0.35] and [r["best_epoch"] for r in rows] == [1, 1]
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert table[0] == "| optim.lr | best held-out mAP | at epoch | final mAP | initial mAP |"
    assert table[2:] == ["| 0.5 | 0.6000 | 1 | 0.0500 | 0.0100 |", "| 0.25 | 0.3500 | 1 | 0.0500 | 0.0100 |"]
    assert json.loads((tmp_path / "sweep.json").read_text())[1]["setting"] == {"optim.lr": 0.25}
    assert (tmp_path / "sweep.png").is_file()  # one key: its curve


def test_sweep_curve_orders_the_settings_and_marks_the_best_where_it_is(tmp_path):
    values, scores, scale = sweep_points([1e-3, 5e-5, 1e-4], [0.5, 0.3, None])
    assert values == [5e-5, 1e-4, 1e-3] and scale == "log"
    np.testing.assert_array_equal(scores, [0.3, np.nan, 0.5])
    assert sweep_points([2.0, 0.5, 1.0], [0.1, 0.2, 0.3])[2] == "linear"  # a span under 10x
    assert sweep_points([0, 8, 64], [0.1, 0.2, 0.3])[2] == "linear"  # 0 has no logarithm
    names = ["resnet18", "koch", ()]
    assert sweep_points(names, [0.1, 0.2, 0.3])[:1] == (names,) and sweep_points(names, [0, 0, 0])[2] == "categorical"

    def best_marker_x(scores):
        path = sweep_curve("loss.margin", [0.5, 1.0, 2.0, 4.0], scores, str(tmp_path / "curve.png"))
        with Image.open(path) as im:
            px = np.asarray(im.convert("RGB")).astype(int)
        best = np.round(np.array(to_rgb(figures.BEST_COLOUR)) * 255)
        cols = np.nonzero((np.abs(px - best) <= 2).all(-1))[1]
        assert cols.size > 30
        return np.median(cols)

    left, right = best_marker_x([0.9, 0.5, 0.4, 0.3]), best_marker_x([0.3, 0.4, 0.5, 0.9])
    assert right - left > 150  # the marker moved with the best setting, from the first to the last tick

    def grey_rows(initial):  # where the dashed grey line of the networks at initialisation is drawn
        path = sweep_curve("loss.margin", [0.5, 1.0, 2.0, 4.0], [0.2, 0.9, 0.9, 0.9], str(tmp_path / "i.png"),
                           initial=initial)
        with Image.open(path) as im:
            px = np.asarray(im.convert("RGB")).astype(int)
        rows = np.nonzero((np.abs(px - 128) <= 2).all(-1).sum(axis=1) > 100)[0]  # long grey horizontal runs
        return rows

    low, high = grey_rows([0.25] * 4), grey_rows([0.85] * 4)
    assert low.size and high.size and low.mean() - high.mean() > 100  # drawn at its value, below and above


@pytest.mark.slow
def test_a_two_setting_sweep_through_launch_produces_its_table(tmp_path):
    r = run_launch(["--config=configs/triplet.py:digits", f"--workdir={tmp_path / 'sweep'}", *TINY,
                    "--config.train.num_epochs=1", "--config.train.steps_per_epoch=3",
                    "--sweep=loss.margin=[0.1, 0.3]"])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["setting"] for row in rows] == [{"loss.margin": 0.1}, {"loss.margin": 0.3}]
    for row in rows:  # each row is the metrics.json its own run wrote
        metrics = json.loads((tmp_path / "sweep" / setting_name(row["setting"]) / "metrics.json").read_text())
        assert row["best_map"] == metrics["best_epoch"]["map"] and row["final_map"] == metrics["final"]["map"]
    assert "| loss.margin | best held-out mAP |" in r.stdout
