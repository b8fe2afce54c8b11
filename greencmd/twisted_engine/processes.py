"""Child processes for the Twisted twin: a ProcessProtocol whose Deferred fires at processEnded.

``lastlog`` runs ``tail`` and configured commands run their program through
:func:`run`; ``follow`` spawns its ``tail -F`` with :func:`spawn`. Every child
runs in its own session (so one ``killpg`` reaches all it started), reads no
stdin, and is killed with everything it started when its Deferred is
cancelled (timeout, client gone, shutdown). The reactor reaps it. Compare
``gevent_engine/processes.py``.
"""

from __future__ import annotations

import errno
import os
import shutil

from twisted.internet import defer, error, reactor
from twisted.internet.protocol import ProcessProtocol

from ..core.programs import (
    AT_ONCE,
    STDERR_KEPT,
    Finished,
    TimedOut,
    TooMuchOutput,
    kill_process_group,
)

__all__ = ["SETSID", "spawn", "SessionChild", "ChildProtocol", "run"]

SETSID = shutil.which("setsid") or "setsid"
#: Children that run to their end at once (every engine's bound); more wait their turn.
_turns = defer.DeferredSemaphore(AT_ONCE)


def spawn(child: ProcessProtocol, argv: list[str]) -> None:
    """Start ``argv`` in a session (so a process group) of its own; raises OSError.

    Twisted's spawnProcess can give a child neither a process group nor a
    session, so the child goes through util-linux's ``setsid``, which becomes
    it. (The other engines make only a process group: a session costs the
    server a scheduler autogroup per child; docs/performance.md, tenth pass.)
    A program that does not exist is reported before that, with the same words
    as the gevent engine's.
    """
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    reactor.spawnProcess(child, SETSID, [SETSID, "--", *argv], env=os.environ,
                         childFDs={0: "w", 1: "r", 2: "r"})


class SessionChild(ProcessProtocol):
    """A child started by :func:`spawn`: reads no stdin, can be killed with all it started."""

    pid: int | None = None

    def connectionMade(self) -> None:
        """Note the pid (the transport forgets it once the child is reaped); close stdin."""
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def kill(self) -> None:
        """SIGKILL the child and its session; never raises.

        The child itself first: it may not have become a session leader yet.
        The group also after the reactor reaped the child: Linux keeps a process
        group's number while any process is still in the group.
        """
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        if self.pid is not None:
            kill_process_group(self.pid)


class ChildProtocol(SessionChild):
    """Collects a child's output; ``done`` fires with a :class:`Finished` when it ends.

    Past ``limit`` bytes of stdout, ``done`` fails with TooMuchOutput. The
    child's own exit also kills its session, so nothing it left behind holds
    the pipes open.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done = defer.Deferred(lambda _: self.kill())
        self.out: list[bytes] = []
        self.err = b""
        self.size = 0

    def outReceived(self, data: bytes) -> None:
        """Buffer output, up to the size limit."""
        self.size += len(data)
        if self.size > self.limit:
            self.out.clear()
            self.kill()
        else:
            self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        """Keep the end of stderr for the error message."""
        self.err = (self.err + data)[-STDERR_KEPT:]

    def processExited(self, reason) -> None:
        """The child is gone: end whatever it left running in its session."""
        self.kill()

    def processEnded(self, reason) -> None:
        """Fire ``done``, unless it was cancelled already."""
        if self.done.called:
            return
        if self.size > self.limit:
            self.done.errback(TooMuchOutput())
            return
        status = reason.value.exitCode
        if status is None:
            status = -(reason.value.signal or 0)
        self.done.callback(Finished(status, b"".join(self.out), self.err))


def _timed_out(result: object, timeout: float) -> None:
    raise TimedOut()


def run(argv: list[str], timeout: float, limit: int) -> defer.Deferred:
    """Run ``argv`` once it has a turn; a Deferred of its :class:`Finished`.

    At most AT_ONCE children run at once; the rest wait in the semaphore's queue,
    and cancelling the Deferred there (client gone, shutdown) leaves the queue.
    The Deferred fails with OSError if the child cannot start, with
    :class:`TimedOut` after ``timeout`` seconds of running and with
    :class:`TooMuchOutput` past ``limit`` bytes of stdout; the child is killed then.
    """
    return _turns.run(_run, argv, timeout, limit)


def _run(argv: list[str], timeout: float, limit: int) -> defer.Deferred:
    child = ChildProtocol(limit)
    spawn(child, argv)
    return child.done.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)
