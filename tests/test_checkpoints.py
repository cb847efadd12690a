"""Checkpoints: "best" is the step with the highest recorded mAP, retention is exactly the latest few plus the
best (also across a resume), a save is on disk when it returns, and broken files are told from a mismatch."""

import os

import numpy as np
import pytest

from navee_jax.errors import UserError
from navee_jax.checkpoints import Checkpoints, UnreadableCheckpoint


def _state(step: int) -> dict:
    return {"w": np.full((3,), float(step), np.float32), "b": np.arange(2, dtype=np.float32) + step}


def _save(ckpt: Checkpoints, step: int, map_: float) -> None:
    ckpt.save(step, _state(step), {"epoch": step}, {"map": map_})


def _on_disk(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _expected(history: dict[int, float], keep_last: int) -> list[int]:
    """The reference rule: the latest keep_last steps, plus the step with the highest mAP (the first of ties)."""
    steps = sorted(history)
    return sorted(set(steps[-keep_last:]) | {max(steps, key=lambda s: history[s])})


def test_ties_go_to_the_earlier_step(tmp_path):
    ckpt = Checkpoints(str(tmp_path), keep_last=1)
    for step, m in [(1, 0.5), (2, 1.0), (3, 1.0), (4, 0.9)]:
        _save(ckpt, step, m)
    assert ckpt.resolve_step("best") == 2 and _on_disk(tmp_path) == [2, 4]
    ckpt.close()


def test_best_is_the_highest_map_and_retention_is_exact_across_a_resume(tmp_path):
    history = {}
    ckpt = Checkpoints(str(tmp_path), keep_last=2)
    for step, m in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.4)]:
        _save(ckpt, step, m)
        history[step] = m
        assert _on_disk(tmp_path) == _expected(history, 2)
    assert ckpt.resolve_step("best") == 20 and ckpt.resolve_step("latest") == 40
    ckpt.close()

    # A resumed run is a new process: the best must come from what is on disk, and old steps still go.
    ckpt = Checkpoints(str(tmp_path), keep_last=2)
    assert ckpt.resolve_step("best") == 20
    for step, m in [(50, 0.3), (60, 0.2), (70, 0.95), (80, 0.1)]:
        _save(ckpt, step, m)
        history[step] = m
        assert _on_disk(tmp_path) == _expected(history, 2), step
    ckpt.close()

    reader = Checkpoints(str(tmp_path))  # read-only, as evaluation and recognition open it
    assert reader.resolve_step("best") == 70 and reader.resolve_step("latest") == 80
    assert reader.restore_meta(70) == {"epoch": 70}
    np.testing.assert_array_equal(reader.restore_arrays(70)["w"], _state(70)["w"])
    with pytest.raises(UserError, match=r"--checkpoint='55'.*saved steps: \[70, 80\]"):
        reader.resolve_step("55")
    reader.close()
    assert _on_disk(tmp_path) == [70, 80]


def test_a_save_is_on_disk_when_it_returns(tmp_path):
    ckpt = Checkpoints(str(tmp_path), keep_last=3)
    _save(ckpt, 7, 0.5)
    # No write in flight, and another process's view (a fresh read-only manager) already sees the step.
    assert not ckpt.manager.is_saving_in_progress()
    other = Checkpoints(str(tmp_path))
    assert other.steps() == [7] and other.restore_meta(7) == {"epoch": 7}
    other.close()
    ckpt.close()


def test_unreadable_files_are_told_from_a_config_mismatch_and_can_be_set_aside(tmp_path):
    ckpt = Checkpoints(str(tmp_path), keep_last=3)
    _save(ckpt, 1, 0.5)
    _save(ckpt, 2, 0.6)
    with pytest.raises(UserError, match="does not match this config") as mismatch:
        ckpt.restore(2, {"w": np.zeros((4,), np.float32)})
    assert not isinstance(mismatch.value, UnreadableCheckpoint)

    state_dir = os.path.join(tmp_path, "checkpoints", "2", "state")
    for folder, _, files in os.walk(state_dir):  # truncate every data file of step 2
        for f in files:
            open(os.path.join(folder, f), "wb").close()
    with pytest.raises(UnreadableCheckpoint, match=r"checkpoints/2 is unreadable .*delete that folder"):
        ckpt.restore(2, _state(2))
    moved = ckpt.set_aside(2)
    assert moved == os.path.join(tmp_path, "unreadable_checkpoints", "2") and os.path.isdir(moved)
    assert ckpt.steps() == [1]
    _save(ckpt, 2, 0.7)  # the step can be saved again
    np.testing.assert_array_equal(ckpt.restore(2, _state(0))["b"], _state(2)["b"])
    ckpt.close()
