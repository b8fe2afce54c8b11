"""Child processes for the gevent engine: the one place that spawns, reads, times out and kills.

``lastlog`` runs ``tail``, configured commands run their program, ``follow``
runs ``tail -F``: each child is started here without a shell, with stdin from
/dev/null, in its own process group (so one ``killpg`` reaches everything it
started), and whatever happens to the greenlet that waits for it (a timeout,
a client reset, shutdown) the ``finally`` here kills the group and reaps it.
"""

from __future__ import annotations

from typing import BinaryIO

import gevent
from gevent.lock import BoundedSemaphore

from ..core.programs import (
    AT_ONCE,
    OWN_GROUP,
    STDERR_KEPT,
    Finished,
    TimedOut,
    TooMuchOutput,
    kill_process_group,
)

# gevent.subprocess's API, spawned by the stdlib's faster C code (see the module).
from .fast_subprocess import DEVNULL, PIPE, Popen

__all__ = ["Finished", "TimedOut", "TooMuchOutput", "start", "run", "run_tail", "read_capped",
           "read_last", "kill_group", "kill_and_reap", "CHUNK"]

#: Read size from a child's pipe (a pipe holds 64 KiB).
CHUNK = 65536
_turns = BoundedSemaphore(AT_ONCE)


def start(argv: list[str], stderr: int = PIPE) -> Popen:
    """Start ``argv`` (no shell, stdin /dev/null, its own process group); raises OSError."""
    return Popen(argv, stdin=DEVNULL, stdout=PIPE, stderr=stderr, **OWN_GROUP)


def run(argv: list[str], timeout: float, limit: int) -> Finished:
    """Run ``argv`` to its end and return what it printed; raises OSError if it cannot start.

    Raises :class:`TimedOut` after ``timeout`` seconds and :class:`TooMuchOutput`
    past ``limit`` bytes of stdout. Once the child exits, whatever it left
    running in its process group is killed: a grandchild that holds our pipe must not
    keep the reply waiting.
    """
    with _turns:
        return _run(argv, timeout, limit)


def _run(argv: list[str], timeout: float, limit: int) -> Finished:
    child = start(argv)
    # Two pipes read at once, each by its own greenlet: a child that fills
    # stderr while we wait on stdout must not block.
    readers = [gevent.spawn(read_capped, child, child.stdout, limit),
               gevent.spawn(read_last, child.stderr, STDERR_KEPT)]
    try:
        with gevent.Timeout(timeout, TimedOut):
            status = child.wait()
            kill_group(child)
            output, errors = readers[0].get(), readers[1].get()
    finally:
        kill_and_reap(child, readers)
    return _finished(status, output, errors)


def run_tail(argv: list[str], timeout: float, limit: int) -> Finished:
    """:func:`run` for greencmd's own ``tail`` (``lastlog``): its pipes read in turn, here.

    ``tail`` writes a line or two to stderr at most and starts no process of its
    own: stderr cannot fill while stdout is read, and nothing outlives it to hold
    a pipe, so one greenlet reads both and no reader is spawned (about 50 µs less
    per lastlog in the server; docs/performance.md, tenth pass). A configured
    program may do either: :func:`run`.
    """
    with _turns:
        child = start(argv)
        try:
            with gevent.Timeout(timeout, TimedOut):
                output = read_capped(child, child.stdout, limit)
                errors = read_last(child.stderr, STDERR_KEPT)
                status = child.wait()
        finally:
            kill_and_reap(child)
    return _finished(status, output, errors)


def _finished(status: int, output: bytes | None, errors: bytes) -> Finished:
    if output is None:
        raise TooMuchOutput()
    return Finished(status, output, errors)


def read_capped(child: Popen, stream: BinaryIO, limit: int) -> bytes | None:
    """Everything ``stream`` gives until EOF; past ``limit`` bytes, kill ``child``, None."""
    chunks = []
    size = 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            kill_group(child)
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def read_last(stream: BinaryIO, keep: int) -> bytes:
    """The last ``keep`` bytes ``stream`` gives until EOF (the rest is read and dropped)."""
    kept = b""
    while chunk := stream.read(CHUNK):
        kept = (kept + chunk)[-keep:]
    return kept


def kill_group(child: Popen) -> None:
    """SIGKILL everything in ``child``'s process group, the child included; never raises."""
    kill_process_group(child.pid)


def kill_and_reap(child: Popen, readers: list[gevent.Greenlet] = ()) -> None:
    """Kill ``child`` and all it started, end its ``readers``, close its pipes, reap it.

    When all is over already (the usual end), that is closing two pipes.
    Otherwise the work is a greenlet of its own, which a kill of this one cannot
    stop: cleanup that waits could be interrupted by a second kill (a reset
    during shutdown), leaving a zombie or an open pipe behind.
    """
    if child.returncode is None or not all(reader.dead for reader in readers):
        gevent.spawn(_clean_up, child, readers).join()
    else:
        _close_pipes(child)


def _clean_up(child: Popen, readers: list[gevent.Greenlet]) -> None:
    gevent.killall(readers)  # before their pipes close: none may wait on a closed one
    _close_pipes(child)
    if child.returncode is None:
        kill_group(child)
        child.wait()


def _close_pipes(child: Popen) -> None:
    for stream in (child.stdout, child.stderr):
        if stream is not None:
            stream.close()
