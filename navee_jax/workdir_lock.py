"""One run per workdir: `workdir/lock` holds the running process's id and host.

The file is held with an exclusive `flock`, which the kernel releases when its process dies however it dies,
so a lock file left behind by a killed run is simply taken over (and the takeover is reported). On file
systems without working `flock` the recorded pid decides: a lock of a dead process on this host is stale.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from navee_jax.errors import UserError

LOCK_NAME = "lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('started', '?')})"


class WorkdirLock:
    """`with WorkdirLock(workdir):` creates the workdir if needed and holds its lock for the block."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self._file = None

    def __enter__(self) -> WorkdirLock:
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise UserError(f"--workdir={self.workdir!r} is a file, not a folder; pass a folder path")
        self._created = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        f = self._open_locked()
        previous = self._holder()
        here = socket.gethostname()
        if previous.get("pid") is not None and previous.get("host") == here and _alive(previous["pid"]) \
                and previous["pid"] != os.getpid():
            f.close()  # flock is not honoured here (e.g. some network file systems), but the holder lives
            raise self._in_use(previous)
        if previous:
            print(f"note: took over the stale lock of {_describe(previous)} in {self.path}: that run is no "
                  f"longer running")
        f.seek(0)
        f.truncate()
        json.dump({"pid": os.getpid(), "host": here,
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            # Before unlocking: a waiting run then finds no stale holder to report. Already gone when someone
            # deleted it (or the workdir) meanwhile: nothing is left to remove, and the run's results stand.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            if self._created and os.path.isdir(self.workdir) and not os.listdir(self.workdir):  # failed early
                os.rmdir(self.workdir)

    def _open_locked(self):
        """The lock file, flocked. Retried when the holder removed the file between our open and our flock
        (we would otherwise hold a lock on a file no other run can see)."""
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                f.close()
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise self._in_use(self._holder()) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    return f
            except FileNotFoundError:
                pass
            f.close()

    def _in_use(self, holder: dict) -> UserError:
        return UserError(f"workdir {self.workdir!r} is in use by another run: {_describe(holder)}; wait for it to "
                         f"finish or pass another --workdir")

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                text = f.read().strip()
            return json.loads(text) if text else {}
        except (OSError, ValueError):
            return {"pid": None, "host": "unknown (unreadable lock file)"}
