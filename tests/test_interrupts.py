"""`navee_jax.cli.exit_on_interrupt`: a signal ends the process with one line and 128 + its number, also when
the code it interrupted turns its exception into another one; an error without a signal stays an error."""

import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent("""
    import os, signal, sys
    from navee_jax.cli import exit_on_interrupt
    how = sys.argv[1]
    with exit_on_interrupt(lambda: "the hint"):
        if how == "plain error":
            raise RuntimeError("a real failure")
        try:
            os.kill(os.getpid(), signal.SIGTERM if how == "sigterm wrapped" else signal.SIGINT)
            signal.pause()  # not reached: the handler raises in the main thread
        except BaseException as e:  # a library wrapping whatever it caught
            if how != "sigint":
                raise RuntimeError("wrapped") from e
            raise
""")


def _run(how: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROGRAM, how], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how,status,name", [("sigint", 130, "SIGINT"), ("sigint wrapped", 130, "SIGINT"),
                                             ("sigterm wrapped", 143, "SIGTERM")])
def test_a_signal_exits_with_one_line_even_when_its_exception_was_replaced(how, status, name):
    r = _run(how)
    assert r.returncode == status, r.stderr
    assert r.stderr == f"interrupted by {name}: the hint\n"


def test_an_error_without_a_signal_is_not_reported_as_an_interruption():
    r = _run("plain error")
    assert r.returncode == 1 and "RuntimeError: a real failure" in r.stderr and "interrupted" not in r.stderr
