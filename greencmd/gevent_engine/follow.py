"""``follow [N]`` for the gevent engine: copy ``tail -F`` to the client until told to stop.

The session's greenlet runs the loop: read what tail printed, send it, repeat.
A second greenlet waits for the client's stop line (or EOF, or a reset) and
ends the follow by killing tail: the loop then reads to the pipe's end, sends
``End follow`` and returns, so a stop never cuts a line in half. At shutdown the
server kills tail the same way. A client that stops reading stalls only this
loop, in its send: tail's pipe fills and tail waits, and the send gives up
after ``--idle-timeout`` (log reason: idle timeout).

Compare ``twisted_engine/follow.py``, where tail's transport is registered as the
client's producer, and ``asyncio_engine/follow.py``.
"""

from __future__ import annotations

from typing import Protocol

import gevent

from ..core import logtail, protocol
from . import processes
from .commands import ServerState
from .connection import ClientGone, Connection, LineTooLong
from .fast_subprocess import DEVNULL, Popen

__all__ = ["follow"]

class Following(Protocol):
    """What a follow needs of its session (``session.Session`` has it)."""

    conn: Connection
    state: ServerState
    following: Popen | None


#: What ``wait_for_stop`` returns when the client reset.
GONE = object()


def follow(session: Following, arg: bytes) -> bytes:
    """Send the backlog, then lines as they are appended; return the reply's last part."""
    conn, state = session.conn, session.state
    try:
        count = logtail.follow_count(arg, state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    # Up to 4 MiB of backlog: read on a thread, so no other session waits for the disk.
    start = state.pool.apply(logtail.follow_start, (state.lastlog.path, count))
    if isinstance(start, bytes):
        return start
    try:
        tail = processes.start(start.argv, stderr=DEVNULL)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % exc)
    session.following = tail
    stopper = None
    try:
        conn.write(protocol.FOLLOW_BEGIN + start.backlog)
        conn.flush()
        stopper = gevent.spawn(wait_for_stop, conn, tail)
        lines = protocol.FollowLines()
        while chunk := tail.stdout.read(processes.CHUNK):
            data = lines.feed(chunk)
            if data:
                conn.send_while_reading(data)
        # Not ready: tail ended without a stop from the client (shutdown, or by itself).
        ended = stopper.value if stopper.ready() else None
    finally:
        session.following = None
        if stopper is not None:
            stopper.kill(block=False)  # nothing in cleanup waits: see kill_and_reap
        processes.kill_and_reap(tail)
    if ended is GONE:
        raise ClientGone()
    return lines.finish() + protocol.FOLLOW_END


def wait_for_stop(conn: Connection, tail: Popen) -> object:
    """Wait for the client's stop line, EOF or reset, then end the follow by killing tail.

    The stop line gets no reply and is consumed here; after EOF the session
    reads EOF again and closes; a line that is too long is a stop too, and the
    session then answers it ``Line too long.`` as it would any other.
    """
    try:
        return conn.next_line()
    except LineTooLong:
        return None
    except ClientGone:
        return GONE
    finally:
        processes.kill_group(tail)
