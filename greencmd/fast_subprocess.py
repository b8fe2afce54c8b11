"""``gevent.subprocess.Popen``, spawned by the standard library's C ``fork_exec``.

What it replaces: ``gevent.subprocess.Popen`` forks and prepares the child in
Python. The standard library's ``Popen`` does it in C (``_posixsubprocess``,
with vfork), which this machine measures several times faster per spawn
(``python benchmarks/spawn.py``; docs/performance.md has the figures). ``lastlog``
spawns a ``tail`` per request, so the spawn is most of its cost.

What stays the same: the part of gevent.subprocess's API greencmd uses, with
its cooperative behaviour. ``stdout=PIPE`` is a gevent ``FileObjectPosix``, so
``read()`` waits in this greenlet only; ``wait(timeout)`` waits on an
``AsyncResult`` and raises ``subprocess.TimeoutExpired``; ``poll()``, ``kill()``
and ``returncode`` behave as usual.

Why it is safe: the exit is reported by the same libev child watcher that
gevent.subprocess uses, and, as gevent.subprocess does, the SIGCHLD handler is
installed *before* the fork and the watcher is started before this greenlet can
yield. So a child that exits at once is still seen: libev reaps it in the
event loop, which runs only after the watcher exists. (A watcher made without
that handler misses a child that exits before it: the first ``lastlog`` of a
fresh server could then hang.) The child is never waited for with a blocking
``waitpid``, so the event loop never stops.
"""

from __future__ import annotations

import os
import subprocess
from subprocess import DEVNULL, PIPE, STDOUT, TimeoutExpired

import gevent
from gevent.event import AsyncResult
from gevent.fileobject import FileObjectPosix

__all__ = ["Popen", "PIPE", "STDOUT", "DEVNULL", "TimeoutExpired"]


class Popen(subprocess.Popen):
    """A child process with cooperative ``stdout``, ``wait()`` and ``poll()``.

    Only ``stdout`` may be a ``PIPE``; stdin and stderr are passed on as given.
    Must be created in the event loop's thread.
    """

    def __init__(self, args: list[str], *, stdout=None, **kwargs) -> None:
        loop = gevent.get_hub().loop
        loop.install_sigchld()  # before the fork: the exit of a quick child must be seen
        self._exited = AsyncResult()
        read_end = None
        if stdout == PIPE:
            read_end, stdout = os.pipe()
        try:
            super().__init__(args, stdout=stdout, **kwargs)
        except BaseException:
            if read_end is not None:
                os.close(read_end)
            raise
        finally:
            if read_end is not None:
                os.close(stdout)  # the child has its own copy of the write end
        self._watcher = loop.child(self.pid, False)
        self._watcher.start(self._on_exit)
        if read_end is not None:
            self.stdout = FileObjectPosix(read_end, "rb", bufsize=0)

    def _on_exit(self) -> None:
        self._watcher.stop()
        self.returncode = os.waitstatus_to_exitcode(self._watcher.rstatus)
        self._exited.set(self.returncode)

    def wait(self, timeout: float | None = None) -> int:
        """Wait (this greenlet only) for the exit; raises TimeoutExpired after ``timeout``."""
        try:
            return self._exited.get(timeout=timeout)
        except gevent.Timeout:
            raise TimeoutExpired(self.args, timeout) from None

    def _internal_poll(self, *args: object, **kwargs: object) -> int | None:
        # The stdlib would call waitpid() itself: the watcher reaps instead.
        return self.returncode
