"""``gevent.subprocess.Popen``, spawned by the stdlib's C code and awaited on a pidfd.

What it replaces: ``gevent.subprocess.Popen``, for the part of its API greencmd
uses: ``Popen(args, stdin=..., stdout=PIPE, stderr=PIPE, process_group=...)``,
cooperative ``stdout`` and ``stderr`` (``read()`` waits in this greenlet only), and
cooperative ``wait(timeout)``, ``poll()``, ``kill()`` and ``returncode``. A
command reads exactly as it would with gevent's own.

What it buys (``python benchmarks/spawn.py``; docs/performance.md has the figures):

- Speed: gevent.subprocess forks and prepares the child in Python; the stdlib's
  ``Popen`` does it in C (``_posixsubprocess``, with vfork), several times faster
  per spawn. ``lastlog`` spawns a ``tail`` per request.
- Reliability: gevent learns that a child exited from a SIGCHLD handler and libev
  child watchers. Under a storm of connections that each run a child, this
  machine loses wake-ups there: a plain gevent server (``StreamServer``,
  ``gevent.subprocess``, no greencmd code) left about 60 of 4,000 requests
  waiting for ever on children and pipes that had long finished, on gevent 24.11
  and 26.9, with libev's epoll and poll backends alike. Waiting on a pidfd
  instead (an fd that becomes readable when the process exits, Linux 5.3+) uses
  only io watchers: the same load completes every request.

- Lighter pipes: ``stdout`` and ``stderr`` are a :class:`Pipe` (``read()``,
  ``close()``, ``fileno()``) on ``gevent.os.nb_read``, not a ``FileObjectPosix``.

Why it is safe: the child is never waited for with a blocking call. Its exit is
awaited with gevent's public ``gevent.socket.wait_read(pidfd)``, and only then
reaped with ``waitpid``, which returns at once. No SIGCHLD handler is involved.
Where pidfds do not exist (Linux before 5.3, or a seccomp filter that denies
``pidfd_open``, as Docker's did before 20.10), it falls back to gevent's own
mechanism: the SIGCHLD handler installed *before* the fork (as gevent.subprocess
does; without that, a child that exits at once is never seen) and a libev child
watcher. Which of the two applies is asked of the kernel once, before the
first child.

Once gevent's SIGCHLD handler is installed in the process (a plugin that uses
gevent.subprocess installs it), libev reaps every child; from then on this class
waits as gevent.subprocess does, with a libev child watcher. Limit: a child of
ours already running when that handler is installed reports
:data:`STATUS_LOST` (its output is intact).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
from subprocess import DEVNULL, PIPE, STDOUT, TimeoutExpired

import gevent
from gevent.event import AsyncResult
from gevent.os import nb_read
from gevent.socket import wait_read

__all__ = ["Popen", "Pipe", "PIPE", "STDOUT", "DEVNULL", "TimeoutExpired"]

#: Errors of pidfd_open() that mean "never here": no such system call, or denied.
NO_PIDFDS = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES})
#: Whether pidfds work here; None until the first child asks (see pidfds_work()).
_pidfds: bool | None = None if hasattr(os, "pidfd_open") else False
#: The exit status reported for a child whose status libev took (see Limits).
STATUS_LOST = 255
#: True once libev was seen reaping a child of ours: gevent's SIGCHLD handler is in.
_libev_reaps = False
_libc = ctypes.CDLL(None, use_errno=True)
#: One buffer for sigaction() to fill, larger than any struct sigaction (only the
#: event loop's thread spawns), and its first field: the handler.
_action = ctypes.create_string_buffer(512)
_handler = ctypes.c_void_p.from_buffer(_action)


def pidfds_work() -> bool:
    """True when this process may open pidfds: asked of the kernel once.

    Python offers ``os.pidfd_open`` wherever it was built against a recent
    kernel's headers; the kernel it runs on may still lack the call, or a seccomp
    filter deny it. Any other error (out of descriptors) says nothing about
    pidfds and is not remembered: falling back would install gevent's SIGCHLD
    handler for good.
    """
    global _pidfds
    if _pidfds is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError as exc:
            if exc.errno not in NO_PIDFDS:
                return True  # the child's own pidfd_open will say what is wrong
            _pidfds = False
        else:
            _pidfds = True
    return _pidfds


def libev_reaps() -> bool:
    """True when a SIGCHLD handler is installed (gevent's, once anything used
    gevent.subprocess): libev then reaps every child, and only its child watcher
    learns an exit status.

    Asked of the C library: gevent installs its handler below Python's signal
    module, which cannot see it. Any handler counts; the first field of
    ``struct sigaction`` is the handler on every Linux C library.
    """
    if _libev_reaps:
        return True
    if _libc.sigaction(signal.SIGCHLD, None, _action) != 0:
        return False
    return _handler.value not in (None, 1)  # SIG_DFL, SIG_IGN


class _WaitExpired(Exception):
    """Our own wait's timeout, told apart from any timeout of the caller's."""


class Popen(subprocess.Popen):
    """A child process with cooperative ``stdout``, ``stderr``, ``wait()`` and ``poll()``.

    ``stdout`` and ``stderr`` may be a ``PIPE``; stdin is passed on as given.
    Must be created in the event loop's thread.
    """

    def __init__(self, args: list[str], *, stdout=None, stderr=None, **kwargs) -> None:
        self._pidfd: int | None = None
        self._exited: AsyncResult | None = None
        watch_pidfd = pidfds_work() and not libev_reaps()
        if not watch_pidfd:
            # Before the fork: the exit of a child that ends at once must be seen.
            gevent.get_hub().loop.install_sigchld()
        ours: dict[str, int] = {}  # the read ends of our pipes
        theirs: list[int] = []  # the write ends, closed here once the child has them
        try:
            if stdout == PIPE:
                ours["stdout"], stdout = os.pipe()
                theirs.append(stdout)
            if stderr == PIPE:
                ours["stderr"], stderr = os.pipe()
                theirs.append(stderr)
            super().__init__(args, stdout=stdout, stderr=stderr, **kwargs)
        except BaseException:
            _close(ours.values())
            raise
        finally:
            _close(theirs)
        try:
            if watch_pidfd:
                self._pidfd = os.pidfd_open(self.pid)
            else:
                self._watch_with_sigchld()
        except OSError:  # out of descriptors: the child must not be left behind
            self.kill()
            os.waitpid(self.pid, 0)  # returns at once: SIGKILL cannot be ignored
            self.returncode = -9
            _close(ours.values())
            raise
        for name, fd in ours.items():
            setattr(self, name, Pipe(fd))

    def wait(self, timeout: float | None = None) -> int:
        """Wait (this greenlet only) for the exit; raises TimeoutExpired after ``timeout``.

        Only its own ``timeout`` becomes TimeoutExpired: a ``gevent.Timeout`` of the
        caller's passes through untouched, as with gevent.subprocess.
        """
        if self.returncode is not None:
            return self.returncode
        if self._exited is not None:
            self._exited.wait(timeout)  # returns at the timeout; raises nothing of its own
            if not self._exited.ready():
                raise TimeoutExpired(self.args, timeout)
            return self._exited.value
        expired = _WaitExpired()
        try:
            wait_read(self._pidfd, timeout, expired)
        except _WaitExpired as exc:
            if exc is not expired:
                raise
            raise TimeoutExpired(self.args, timeout) from None
        self._reap(0)
        return self.returncode

    def _internal_poll(self, *args: object, **kwargs: object) -> int | None:
        # poll(), send_signal() and __del__ come here: never a waitpid that blocks.
        if self.returncode is None and self._pidfd is not None:
            self._reap(os.WNOHANG)
        return self.returncode

    def _reap(self, options: int) -> None:
        global _libev_reaps
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:
            # gevent's SIGCHLD handler was installed since this child started, and
            # libev reaped it: its status is lost. Later children use libev's way.
            _libev_reaps = True
            pid, status = self.pid, STATUS_LOST << 8
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
            self._pidfd = None

    def _watch_with_sigchld(self) -> None:
        # libev reaps every child once gevent's SIGCHLD handler is in; its
        # child watcher is then the only one who learns the exit status.
        self._exited = AsyncResult()
        watcher = gevent.get_hub().loop.child(self.pid, False)

        def on_exit() -> None:
            watcher.stop()
            self.returncode = os.waitstatus_to_exitcode(watcher.rstatus)
            self._exited.set(self.returncode)

        watcher.start(on_exit)


class Pipe:
    """The read end of a child's pipe: ``read()`` waits in this greenlet only.

    gevent.subprocess gives a ``FileObjectPosix``, whose io stack costs about 50
    µs to build per pipe (two per ``lastlog``); this is ``gevent.os.nb_read`` on
    the descriptor. Unlike FileObjectPosix, it must not be closed while a
    greenlet waits in ``read()``: end that greenlet first.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)  # gevent.os.make_nonblocking, in C
        self._fd: int | None = fd

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._fd is None

    def fileno(self) -> int:
        """The descriptor; ValueError once closed."""
        if self._fd is None:
            raise ValueError("I/O operation on closed pipe")
        return self._fd

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (b"" at EOF); everything up to EOF when ``size`` is negative."""
        if size >= 0:
            return nb_read(self.fileno(), size)
        chunks = []
        while chunk := nb_read(self.fileno(), 65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the descriptor (again: nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _close(fds) -> None:
    for fd in fds:
        os.close(fd)
