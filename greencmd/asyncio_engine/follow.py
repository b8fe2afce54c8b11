"""``follow [N]`` for the asyncio engine: copy ``tail -F`` to the client until told to stop.

The session's coroutine runs the loop: read what tail printed, write it, await
``drain()``. A second task waits for the client's stop line (or EOF, or a
reset) and ends the follow by killing tail: the loop then reads to the pipe's
end, sends ``End follow`` and returns. A client that stops reading stalls only
this loop, in ``drain()``, which gives up after ``--idle-timeout``.
Compare ``gevent_engine/follow.py`` and ``twisted_engine/follow.py``.
"""

from __future__ import annotations

import asyncio
from asyncio.subprocess import DEVNULL, Process
from typing import Protocol

from ..core import logtail, protocol
from . import processes
from .commands import ServerState
from .connection import ClientGone, Connection, LineTooLong

__all__ = ["follow"]

class Following(Protocol):
    """What a follow needs of its session (``session.Session`` has it)."""

    conn: Connection
    state: ServerState
    following: Process | None


#: What ``wait_for_stop`` returns when the client reset.
GONE = object()


async def follow(session: Following, arg: bytes) -> bytes:
    """Send the backlog, then lines as they are appended; return the reply's last part."""
    conn, state = session.conn, session.state
    try:
        count = logtail.follow_count(arg, state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    # Up to 4 MiB of backlog: read on a thread, so no other session waits for the disk.
    start = await state.in_thread(logtail.follow_start, state.lastlog.path, count)
    if isinstance(start, bytes):
        return start
    try:
        tail = await processes.start(start.argv, stderr=DEVNULL)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % exc)
    session.following = tail
    stopper = None
    try:
        conn.write(protocol.FOLLOW_BEGIN + start.backlog)
        await conn.flush()
        stopper = asyncio.create_task(wait_for_stop(conn, tail))
        lines = protocol.FollowLines()
        while chunk := await tail.stdout.read(processes.CHUNK):
            data = lines.feed(chunk)
            if data:
                conn.write(data)
                await conn.flush()
        # Not done: tail ended without a stop from the client (shutdown, or by itself).
        ended = stopper.result() if stopper.done() else None
    finally:
        session.following = None
        processes.kill_group(tail)
        if stopper is not None:
            stopper.cancel()
            await asyncio.wait({stopper})  # its read ends before the session reads again
        await processes.drain(tail)
    if ended is GONE:
        raise ClientGone()
    return lines.finish() + protocol.FOLLOW_END


async def wait_for_stop(conn: Connection, tail: Process) -> object:
    """Wait for the client's stop line, EOF or reset, then end the follow by killing tail.

    The stop line gets no reply and is consumed here; a line that is too long is
    a stop too, and the session then answers it ``Line too long.``.
    """
    try:
        return await conn.next_line()
    except LineTooLong:
        return None
    except ClientGone:
        return GONE
    finally:
        processes.kill_group(tail)
