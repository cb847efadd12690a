"""The table scripts' way of running `launch.py`: a training run is skipped when its workdir holds a finished run
(an unfinished one resumes), its wall time is kept beside it in train_seconds.json, and its evaluation is
skipped when its report exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(args: list[str]) -> None:
    """`python launch.py ARGS` in the repository; exits with the command when it fails."""
    command = [sys.executable, os.path.join(REPO, "launch.py"), *args]
    print("$", " ".join(command[1:]), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit(f"failed: {' '.join(command[1:])}")


def finished(workdir: str) -> bool:
    metrics = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics):
        return False
    with open(metrics) as f:
        return "final" in json.load(f)


def train(args: list[str], workdir: str) -> None:
    """Trains `launch.py ARGS --workdir=WORKDIR` unless that run finished; records its wall time."""
    if finished(workdir):
        return
    start = time.perf_counter()
    launch([*args, f"--workdir={workdir}"])
    with open(os.path.join(workdir, "train_seconds.json"), "w") as f:
        json.dump({"seconds": time.perf_counter() - start}, f)


def train_and_evaluate(args: list[str], workdir: str, evaluate: list[str]) -> None:
    """`train`, then the same command with `evaluate` (--mode=evaluate and its settings) unless the workdir
    already holds its report."""
    train(args, workdir)
    if not os.path.exists(os.path.join(workdir, "report", "report.json")):
        launch([*args, f"--workdir={workdir}", *evaluate])


def training_minutes(workdir: str) -> str:
    """'12 min', or '' when the run's time was not recorded."""
    path = os.path.join(workdir, "train_seconds.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f"{json.load(f)['seconds'] / 60:.0f} min"


def chosen(option: str, value: str, known) -> list[str]:
    """The comma-separated names of `value`; exits naming `option` when one is not in `known`."""
    names = [n for n in value.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        sys.exit(f"{option}: unknown {unknown}; choose from {list(known)}")
    return names


def write_table(root: str, text: str) -> None:
    """Prints the table and writes it to <root>/table.md."""
    with open(os.path.join(root, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
