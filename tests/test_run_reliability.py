"""Runs as an operator meets them: "best" is the best recorded epoch for every reader, before and after a
resume; one run per workdir; SIGINT / SIGTERM end in one line; an unreadable checkpoint is set aside and the
run resumes from the newest readable one; --mode=evaluate needs a trained workdir."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY, run_launch
from navee_jax.recognize import Recognizer
from navee_jax.recognize.__main__ import main as recognize_main

# Digits on a small Conv-4 (quick to compile) at a high learning rate: held-out mAP peaks at the first epoch
# and falls after it, so the best epoch is not the last.
ARGS = ["--config=configs/triplet.py:digits", *TINY, "--config.model.backbone=conv4", "--config.optim.lr=0.03",
        "--config.train.steps_per_epoch=3", "--config.train.keep_checkpoints=1"]
CHEAP_EVALUATION = ["--config.eval.grid_ways=(2,)", "--config.eval.grid_shots=(1,)",
                    "--config.eval.standard_episodes=10", "--config.eval.classifiers=('1nn',)",
                    "--config.eval.baselines=()"]


def _steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _best_and_last(workdir) -> tuple[int, int]:
    history = json.loads((workdir / "metrics.json").read_text())["history"]
    best = max(history, key=lambda h: h["map"])  # ties: the first, as the report's best_epoch
    return best["step"], history[-1]["step"]


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr[-3000:]
    return stderr.strip()


@pytest.mark.slow
def test_every_reader_of_best_uses_the_best_recorded_step_before_and_after_a_resume(tmp_path):
    workdir = tmp_path / "run"
    for epochs in (3, 5):  # the second run resumes the first
        r = run_launch([*ARGS, f"--config.train.num_epochs={epochs}", f"--workdir={workdir}"])
        assert r.returncode == 0, r.stderr[-3000:]
        best, last = _best_and_last(workdir)
        assert best != last, "this test needs a run whose best epoch is not its last"
        assert _steps(workdir) == sorted({best, last})  # keep_checkpoints=1: the latest and the best, no more

        r = run_launch([*ARGS, *CHEAP_EVALUATION, f"--workdir={workdir}", "--mode=evaluate"])
        assert r.returncode == 0, r.stderr[-3000:]
        meta = json.loads((workdir / "report" / "report.json").read_text())["meta"]
        assert meta["checkpoint"].startswith(f"best checkpoint: step {best},"), meta

        for checkpoint, step in ((None, best), ("latest", last)):
            loaded_from = Recognizer.load(str(workdir), checkpoint).fingerprint["checkpoint"]
            assert loaded_from.endswith(os.path.join("checkpoints", str(step))), (checkpoint, loaded_from)

    refs = tmp_path / "refs"
    for article in range(2):
        (refs / f"article{article}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 100 * article + 40 * i, np.uint8)).save(refs / f"article{article}/{i}.png")
    gallery = tmp_path / "gallery"
    assert recognize_main(["enroll", f"--workdir={workdir}", f"--references={refs}", f"--gallery={gallery}"]) == 0
    made_by = json.loads((gallery / "gallery.json").read_text())["fingerprint"]["checkpoint"]
    assert made_by.endswith(os.path.join("checkpoints", str(best)))
    assert _steps(workdir) == sorted({best, last})  # readers deleted nothing


@pytest.fixture
def popen():
    """Starts launch.py in the background; whatever is still running at the end of the test is killed."""
    started = []

    def start(args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        started.append(subprocess.Popen([sys.executable, "launch.py", *args], cwd=REPO, env=env, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _lock_holder(workdir) -> dict:
    try:
        text = (workdir / "lock").read_text().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_one_run_per_workdir_clean_interruption_and_fallback_from_an_unreadable_checkpoint(tmp_path, popen):
    workdir = tmp_path / "run"
    long_run = [*ARGS, "--config.train.num_epochs=1000", f"--workdir={workdir}"]

    # 1. While a run holds the workdir, a second one exits at once with one line naming the holder.
    first = popen(long_run)
    _wait_for(lambda: _lock_holder(workdir).get("pid") == first.pid, first, "the lock")
    start = time.time()
    second = run_launch(long_run, timeout=120)
    assert second.returncode == 2 and time.time() - start < 60
    assert f"is in use by another run: pid {first.pid} on host" in _one_line(second.stderr)

    # 2. SIGINT after a checkpoint: one line with that step, exit status 130, the lock released.
    _wait_for(lambda: _steps(workdir), first, "the first checkpoint")
    saved = _steps(workdir)[-1]
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-3000:]
    line = _one_line(err)
    assert line.startswith("interrupted by SIGINT: the last saved checkpoint is step ") and "re-run" in line
    assert int(line.split("step ")[1].split()[0]) == _steps(workdir)[-1] >= saved
    assert not (workdir / "lock").exists()

    # 3. SIGTERM a resumed run: exit status 143, one line.
    resumed = popen(long_run)
    before = _steps(workdir)[-1]
    _wait_for(lambda: _steps(workdir)[-1] > before, resumed, "a checkpoint after the resume")
    resumed.send_signal(signal.SIGTERM)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 143 and _one_line(err).startswith("interrupted by SIGTERM: "), err[-3000:]

    # 4. A stale lock of a dead process, and an unreadable newest checkpoint: the next run takes the lock over,
    # moves the broken step aside and resumes from the newest readable one.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (workdir / "lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    steps = _steps(workdir)
    broken, readable = steps[-1], steps[-2]
    for folder, _, files in os.walk(workdir / "checkpoints" / str(broken) / "state"):
        for f in files:
            open(os.path.join(folder, f), "wb").close()
    epochs = broken // 3  # finish at the broken step's epoch: one epoch to retrain
    r = run_launch([*ARGS, f"--config.train.num_epochs={epochs}", f"--workdir={workdir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"took over the stale lock of pid {int(dead.stdout)}" in r.stdout
    moved = workdir / "unreadable_checkpoints" / str(broken)
    assert f"warning: checkpoint step {broken} is unreadable" in r.stdout and str(moved) in r.stdout
    assert f"falling back to step {readable}" in r.stdout and f"resuming from checkpoint step {readable} " in r.stdout
    assert moved.is_dir() and _steps(workdir)[-1] == broken  # retrained and saved again
    assert json.loads((workdir / "metrics.json").read_text())["history"][-1]["epoch"] == epochs


def test_evaluate_mode_needs_a_trained_workdir_and_writes_nothing_otherwise(tmp_path):
    missing = tmp_path / "nope"
    r = run_launch(["--config=configs/triplet.py:digits", f"--workdir={missing}", "--mode=evaluate"], timeout=120)
    assert r.returncode == 2 and "does not exist" in _one_line(r.stderr) and "--checkpoint=none" in r.stderr
    assert not missing.exists()

    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    r = run_launch(["--config=configs/triplet.py:digits", f"--workdir={empty}", "--mode=evaluate"], timeout=120)
    assert r.returncode == 2 and "has no saved checkpoint" in _one_line(r.stderr)
    assert sorted(os.listdir(empty)) == ["checkpoints"]

    afile = tmp_path / "afile"
    afile.write_text("x")
    r = run_launch(["--config=configs/triplet.py:digits", *TINY, f"--workdir={afile}"], timeout=120)
    assert r.returncode == 2 and "is a file, not a folder" in _one_line(r.stderr)


@pytest.mark.parametrize("deleted", ["lock file", "workdir"])
def test_releasing_the_workdir_lock_survives_its_file_or_workdir_deleted_meanwhile(tmp_path, deleted):
    """A run whose workdir was cleaned by hand while it ran keeps its results: releasing the lock then has
    nothing to remove, instead of ending the run with a FileNotFoundError."""
    import shutil

    from navee_jax.workdir_lock import WorkdirLock

    workdir = tmp_path / "run"
    with WorkdirLock(str(workdir)) as lock:
        assert os.path.exists(lock.path)
        if deleted == "lock file":
            os.remove(lock.path)
        else:
            shutil.rmtree(workdir)
    assert not (workdir / "lock").exists()
    with WorkdirLock(str(workdir)):  # and the workdir can be locked again
        assert (workdir / "lock").exists()


def test_a_workdir_from_before_a_key_resumes_at_its_old_value_and_is_refused_otherwise():
    from configs import triplet
    from navee_jax.errors import UserError
    from navee_jax.launcher.train import _check_resumable, _resume_fingerprint
    from navee_jax.recorded_config import KEYS_ADDED_LATER

    config = triplet.get_config("omniglot")
    older = {k: v for k, v in _resume_fingerprint(config).items() if k not in KEYS_ADDED_LATER}
    assert len(older) < len(_resume_fingerprint(config))
    _check_resumable(older, config, "workdir w")  # the defaults are what the older code ran with
    config.model.tta_shift_px = 1
    with pytest.raises(UserError, match=r"^workdir w was trained with model.tta_shift_px=0 but the config now says 1"):
        _check_resumable(older, config, "workdir w")
    config.model.tta_shift_px, config.model.width = 0, 32
    with pytest.raises(UserError, match="model.width=64"):  # keys it did have are compared as before
        _check_resumable(older, config, "workdir w")
