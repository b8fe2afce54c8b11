"""Child processes for the asyncio engine: spawn, read, time out, kill and reap.

``lastlog`` runs ``tail``, configured commands run their program, ``follow``
runs ``tail -F``; each child is started without a shell, stdin from /dev/null,
in its own process group (one ``killpg`` reaches all it started), and whatever ends
the coroutine that awaits it (a timeout, a client reset, shutdown: all
cancellations) its ``finally`` kills the group. asyncio reaps the child.
Compare ``gevent_engine/processes.py`` and ``twisted_engine/processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from asyncio.subprocess import DEVNULL, PIPE, Process
from collections.abc import Awaitable, Callable

from ..core.programs import (
    AT_ONCE,
    OWN_GROUP,
    STDERR_KEPT,
    Finished,
    TimedOut,
    TooMuchOutput,
    kill_process_group,
)

__all__ = ["start", "run", "run_tail", "read_capped", "read_last", "read_to_end", "drain",
           "kill_group", "CHUNK"]

#: Read size from a child's pipe (a pipe holds 64 KiB).
CHUNK = 65536
_turns: asyncio.Semaphore | None = None


async def start(argv: list[str], stderr: int = PIPE) -> Process:
    """Start ``argv`` (no shell, stdin /dev/null, its own process group); raises OSError."""
    return await asyncio.create_subprocess_exec(*argv, stdin=DEVNULL, stdout=PIPE,
                                                stderr=stderr, **OWN_GROUP)


async def run(argv: list[str], timeout: float, limit: int) -> Finished:
    """Run ``argv`` to its end and return what it printed; raises OSError if it cannot start.

    Raises :class:`TimedOut` after ``timeout`` seconds and :class:`TooMuchOutput`
    past ``limit`` bytes of stdout. Once the child exits, whatever it left in
    its process group is killed: a grandchild holding our pipe must not hold the reply.
    """
    return await _run(argv, timeout, limit, _complete)


async def run_tail(argv: list[str], timeout: float, limit: int) -> Finished:
    """:func:`run` for greencmd's own ``tail`` (``lastlog``): its pipes read in turn, here.

    ``tail`` writes a line or two to stderr at most and starts no process of its
    own: stderr cannot fill while stdout is read, and nothing outlives it to hold
    a pipe, so this coroutine reads both and no task is made for either. A
    configured program may do either: :func:`run`.
    """
    return await _run(argv, timeout, limit, _in_turn)


async def _run(argv: list[str], timeout: float, limit: int,
               complete: Callable[[Process, int], Awaitable[list]]) -> Finished:
    global _turns
    if _turns is None:  # made in the running loop (Python 3.10 binds it at creation)
        _turns = asyncio.Semaphore(AT_ONCE)
    async with _turns:
        child = await start(argv)
        try:
            status, output, errors = await asyncio.wait_for(complete(child, limit), timeout)
        except asyncio.TimeoutError:
            raise TimedOut() from None
        finally:
            kill_group(child)
            await drain(child)  # stopped by a timeout or a reset: its pipes are freed too
    if output is None:
        raise TooMuchOutput()
    return Finished(status, output, errors)


async def _complete(child: Process, limit: int) -> list:
    # The exit and both pipes at once: a child that fills stderr must not block. Awaited
    # here, a cancelled gather is seen by the one who cancelled it (a gather cancelled
    # and left alone complains in the log that its CancelledError was never retrieved).
    return await asyncio.gather(_exit(child), read_capped(child, limit),
                                read_last(child.stderr, STDERR_KEPT))


async def _in_turn(child: Process, limit: int) -> list:
    output = await read_capped(child, limit)
    errors = await read_last(child.stderr, STDERR_KEPT)
    return [await child.wait(), output, errors]


async def _exit(child: Process) -> int:
    await exited(child)
    kill_group(child)  # what it left behind must not hold the pipes open
    return await child.wait()


async def exited(child: Process) -> None:
    """Wait until ``child`` exits, on a pidfd (Linux 5.3+).

    ``Process.wait()`` alone also waits for the child's pipes to close (before
    Python 3.12), which a grandchild holding them can delay until the timeout:
    where pidfds are missing or denied (an old kernel, a seccomp filter), that
    is the wait there is.
    """
    try:
        fd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        # asyncio's watcher reaped it already: it has exited. (Process.wait() would
        # still wait for the pipes, if the watcher's callback has not run yet.)
        return
    except (AttributeError, OSError):  # no pidfds here: wait as asyncio does
        await child.wait()
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def read_capped(child: Process, limit: int) -> bytes | None:
    """Everything stdout gives until EOF; past ``limit`` bytes, kill ``child``, None.

    Past the limit the rest is still read, and dropped: asyncio frees a pipe only at
    its end, and before Python 3.12 ``Process.wait()`` waits for that.
    """
    chunks = []
    size = 0
    while chunk := await child.stdout.read(CHUNK):
        size += len(chunk)
        if size > limit:
            kill_group(child)
            await read_to_end(child.stdout)
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_last(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The last ``keep`` bytes ``stream`` gives until EOF (the rest is read and dropped)."""
    kept = b""
    while chunk := await stream.read(CHUNK):
        kept = (kept + chunk)[-keep:]
    return kept


#: How long a killed child's pipes are read for their end; whatever holds one open
#: longer has left the child's process group, and is not waited for.
DRAIN_SECONDS = 1.0


async def drain(child: Process) -> None:
    """Read the pipes of a killed ``child`` to their end, for at most DRAIN_SECONDS.

    asyncio frees a child's pipes, and its transport, only at their end; pipes
    left unread (a reset cancelled their reader, a follow's client stopped
    reading) hold them open, and what they buffered, until the garbage collector
    finds them, maybe after the loop is closed.
    """
    pipes = [pipe for pipe in (child.stdout, child.stderr)
             if pipe is not None and not pipe.at_eof()]
    if pipes:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_read_all_to_end(pipes), DRAIN_SECONDS)


async def _read_all_to_end(pipes: list[asyncio.StreamReader]) -> None:
    for pipe in pipes:
        await read_to_end(pipe)


async def read_to_end(pipe: asyncio.StreamReader) -> None:
    """Read ``pipe`` until EOF, keeping nothing."""
    while await pipe.read(CHUNK):
        pass


def kill_group(child: Process) -> None:
    """SIGKILL everything in ``child``'s process group, the child included; never raises."""
    kill_process_group(child.pid)
