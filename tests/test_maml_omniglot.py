"""MAML end to end through launch.py: a one-line error for a bad setting, and a short run on Omniglot's
deduplicated characters that fine-tunes to a held-out 5-way 1-shot accuracy clearly above the untrained
network's (the same fine-tuning, on the same episodes, at initialisation)."""

import json
import os

import pytest

from conftest import OMNIGLOT, run_launch


def test_bad_maml_setting_is_one_line_and_exit_status_2(tmp_path):
    r = run_launch(["--config=configs/maml.py:digits", f"--workdir={tmp_path}", "--config.loss.inner_steps=0"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: loss.inner_steps=0")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(OMNIGLOT),
                    reason=f"Omniglot not found at {OMNIGLOT} (../shared/data is not part of a fresh clone)")
def test_short_maml_run_beats_the_untrained_network_on_unseen_omniglot_characters(tmp_path):
    r = run_launch(["--config=configs/maml.py:omniglot_all", f"--workdir={tmp_path}", "--config.model.width=32",
                    "--config.sampler.tasks_per_batch=8", "--config.train.num_epochs=2",
                    "--config.train.steps_per_epoch=40", "--config.optim.lr=0.003", "--config.eval.shots=(1,)",
                    "--config.eval.episodes=40"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "242 classes; train 4000 images / 200 classes" in r.stdout  # Greek and Latin counted once
    split = json.loads((tmp_path / "splits.json").read_text())
    assert len(split["heldout_classes"]) == 42 and not set(split["heldout_classes"]) & set(split["train_classes"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    final, initial = (next(c for c in m[when]["few_shot"] if c["classifier"] == "maml fine-tuning" and
                           (c["ways"], c["shots"]) == (5, 1)) for when in ("final", "initial"))
    assert final["mean"] > initial["mean"] + 0.1, (initial, final)
    assert final["mean"] - final["ci95"] > initial["mean"] + initial["ci95"], (initial, final)


@pytest.mark.slow
def test_resumed_maml_run_gives_the_numbers_of_an_uninterrupted_one(tmp_path):
    """Meta-SGD on digits, tiny: 2 epochs in one go vs 1 epoch, then resumed to 2 (step sizes restored too)."""
    common = ["--config=configs/maml.py:digits", "--config.model.width=4", "--config.data.image_size=16",
              "--config.sampler.tasks_per_batch=4", "--config.train.steps_per_epoch=3", "--config.eval.episodes=5",
              "--config.eval.shots=(1,)", "--config.loss.learn_inner_lr=True"]
    full = run_launch([*common, f"--workdir={tmp_path / 'full'}", "--config.train.num_epochs=2"])
    first = run_launch([*common, f"--workdir={tmp_path / 'resumed'}", "--config.train.num_epochs=1"])
    second = run_launch([*common, f"--workdir={tmp_path / 'resumed'}", "--config.train.num_epochs=2"])
    for r in (full, first, second):
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from checkpoint step 3 (epoch 1/2)" in second.stdout
    want = json.loads((tmp_path / "full" / "metrics.json").read_text())
    got = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert len(got["history"]) == len(want["history"]) == 2
    for g, w in zip(got["history"], want["history"]):
        assert g == pytest.approx(w, rel=1e-6)
    assert {c["classifier"] for c in want["final"]["few_shot"]} == {"1nn", "maml fine-tuning"}
    assert len(got["final"]["few_shot"]) == len(want["final"]["few_shot"])
    for g, w in zip(got["final"]["few_shot"], want["final"]["few_shot"]):
        assert (g["ways"], g["shots"], g["classifier"]) == (w["ways"], w["shots"], w["classifier"])
        assert g["mean"] == pytest.approx(w["mean"], abs=1e-9), w
    assert got["final"]["map"] == pytest.approx(want["final"]["map"], rel=1e-6)
