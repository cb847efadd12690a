"""What `launch.py` does with its parsed flags: every check that needs no data (the whole config, each sweep
setting, the workdir asked to evaluate), then the run under the workdir lock. Any UserError is one line on
stderr and exit status 2 (navee_jax.cli.fail); launch.py turns SIGINT / SIGTERM into one line
(navee_jax.cli.exit_on_interrupt)."""

from __future__ import annotations

import dataclasses

import ml_collections

from navee_jax.cli import fail
from navee_jax.launcher.config_check import check_config
from navee_jax.errors import UserError
from navee_jax.workdir_lock import WorkdirLock


@dataclasses.dataclass(frozen=True)
class Command:
    config: ml_collections.ConfigDict
    workdir: str
    mode: str = "train"  # train | evaluate
    checkpoint: str = "best"  # --mode=evaluate
    sweep: tuple[str, ...] = ()  # --sweep specs


def run_command(command: Command) -> None:
    try:
        axes = check_command(command)  # before the lock, which creates the workdir
        with WorkdirLock(command.workdir):
            _dispatch(command, axes)
    except UserError as e:
        fail(str(e))


def check_command(command: Command) -> list:
    """Raises UserError for anything wrong that needs no data; returns the sweep's axes (or [])."""
    check_config(command.config)
    axes = []
    if command.sweep:
        from navee_jax.launcher.sweep import configure, parse_sweep, settings

        axes = parse_sweep(list(command.sweep), command.config)
        for setting in settings(axes):
            check_config(configure(command.config, setting))
    if command.mode == "evaluate":
        from navee_jax.launcher.evaluate import check_evaluable

        check_evaluable(command.config, command.workdir, command.checkpoint)
    return axes


def _dispatch(command: Command, axes: list) -> None:
    if command.mode == "evaluate":
        from navee_jax.launcher.evaluate import evaluate_run

        evaluate_run(command.config, command.workdir, command.checkpoint)
        return
    from navee_jax.launcher.train import train_and_evaluate

    if axes:
        from navee_jax.launcher.sweep import run_sweep

        run_sweep(command.config, command.workdir, axes, train_and_evaluate)
    else:
        train_and_evaluate(command.config, command.workdir)
