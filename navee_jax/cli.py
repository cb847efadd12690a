"""The command line's one-line endings: a mistake in flags or config keys (exit status 2), and SIGINT / SIGTERM
with what the interrupted run left (exit status 130 / 143)."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import signal
import sys
from typing import Callable, Iterator, NoReturn

import ml_collections


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path.py` or `path.py:variant` -> get_config() / get_config(variant)."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_navee_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def override_problem(config: ml_collections.ConfigDict, key: str) -> str | None:
    node, walked = config, []
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, siblings, n=1)
            where = ".".join(walked) or "the config"
            hint = (f" (did you mean {'.'.join(walked + close)!r}?)" if close
                    else f"; keys of {where}: {sorted(siblings)}")
            return f"unknown config key {key!r}{hint}"
        node, walked = node[part], walked + [part]
    return None


def config_file_problem(argv: list[str]) -> str | None:
    """Why `--config` cannot be used (missing, absent file, fails to load), or None."""
    spec = _config_arg(argv)
    if spec is None:
        return "--config is required, e.g. --config=configs/triplet.py"
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        return f"--config: file {path!r} not found (configs live in configs/, e.g. configs/triplet.py)"
    try:
        load_config_file(spec)
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"--config: {spec!r} failed to load: {type(e).__name__}: {detail}"
    return None


def _override_before_config(argv: list[str]) -> str | None:
    """The first `--config.x=...` placed before `--config=FILE` (absl parses it before the file exists)."""
    for a in argv:
        if a == "--config" or a.startswith("--config="):
            return None
        if a.startswith("--config."):
            return a
    return None


def explain_flag_error(argv: list[str], error: Exception) -> str:
    """One line for a failed flag parse: an override before --config, an unknown config key or a value of
    the wrong type."""
    spec = _config_arg(argv)
    early = _override_before_config(argv)
    if spec is not None and early is not None:
        return f"{early.partition('=')[0]} comes before --config={spec}: put config overrides after --config"
    if spec is not None and config_file_problem(argv) is None:
        config = load_config_file(spec)
        overrides = [a[len("--config."):].partition("=")[::2] for a in argv if a.startswith("--config.")]
        for key, _ in overrides:
            problem = override_problem(config, key)
            if problem:
                return problem
        for key, value in overrides:
            if f"--config.{key}=" in str(error):
                *parents, leaf = key.split(".")
                parent = config
                for p in parents:
                    parent = parent[p]
                expected = parent.get_type(leaf).__name__
                return f"config key {key!r} expects {expected} (default {parent[leaf]!r}), got {value!r}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def fail(message: str) -> NoReturn:
    """The one way a command line tool of this project reports bad input: one line, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str], usage_problem: Callable[[list[str]], str | None] | None = None) -> list[str]:
    """An absl `flags_parser`: a bad subcommand, config file, config key or value ends in `fail`."""
    from absl import flags

    if not {"-h", "--help", "--helpfull"} & set(argv):
        problem = (usage_problem(argv) if usage_problem else None) or config_file_problem(argv)
        if problem:
            fail(problem)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl / ml_collections raise several types; all are the user's flags
        fail(explain_flag_error(argv, e))


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so that `finally` blocks (checkpoint writers, the workdir
    lock) run before the one-line exit."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_pending: list[int] = []  # signals received inside `exit_on_interrupt`, in case their exception was swallowed
_deferring: list[bool] = []  # non-empty inside `interrupts_deferred`


@contextlib.contextmanager
def exit_on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Within the block SIGINT / SIGTERM raise `Interrupted` in the main thread; it ends the process with one
    line on stderr, `interrupted by SIGINT: <hint()>`, and exit status 130 / 143, once the `finally` blocks
    inside (checkpoint writers, the workdir lock) have run.

    A handler's exception can land where Python swallows it (a `__del__`, e.g. TensorFlow's garbage
    collector: "Exception ignored in ..."), so the signal is also kept pending: long loops call
    `raise_if_interrupted` at safe points. `os._exit` skips the interpreter's teardown, which can crash while
    XLA or TensorFlow threads are busy."""
    def handler(signum, frame):
        _pending.append(signum)
        if not _deferring:
            raise Interrupted(signum)

    def unraisable(info) -> None:  # the swallowed Interrupted stays pending instead of printing a traceback
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    _pending.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    except BaseException as e:
        # Code between the handler and here can turn `Interrupted` into another exception (a library that
        # wraps whatever it caught, a `finally` that fails after the cut): a signal that came first is the cause.
        if not isinstance(e, Interrupted) and not _pending:
            raise
        signum = e.signum if isinstance(e, Interrupted) else _pending[0]
        print(f"interrupted by {signal.Signals(signum).name}: {hint()}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = previous_hook
        _pending.clear()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A signal received within the block raises only once the block is done: for work that must not be cut
    in the middle (a checkpoint being written)."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    """Raises `Interrupted` for a signal whose exception did not reach the caller."""
    if _pending:
        raise Interrupted(_pending[0])


def resume_hint(workdir: str, mode: str, sweep: bool) -> str:
    """What an interrupted run leaves and how to go on (reads only the folder: a signal may come before
    anything is imported)."""
    if mode == "evaluate":
        return "the report is incomplete; re-run the same command to evaluate again"
    if sweep:
        return "each finished setting is kept; re-run the same command to resume the sweep"
    folder = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    if not steps:  # Orbax writes a step under a temporary name and renames it when it is complete
        return "no checkpoint was saved yet; re-running the same command starts over"
    return f"the last saved checkpoint is step {max(steps)} in {workdir}; re-run the same command to resume from it"
