"""One client session, run start to finish in the coroutine the server started for it.

Read a line, run the command, write the reply: :meth:`Session.serve` is that
loop, in that order, with ``await`` where it waits. Every way a session can end
is an exception caught in :meth:`Session.run`, which logs why and says what to
tell the client on the way out. At shutdown the server cancels the session's
task; the cancellation reaches whatever it awaits, whose ``finally`` cleans up.
While a command runs, :func:`until_reset` watches for a client reset and
cancels the command. Compare ``gevent_engine/session.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from ..core import auth, protocol
from ..core.logs import (
    CLEAN,
    IDLE,
    SHUTDOWN,
    TOO_LONG,
    internal_error,
    log_lost,
    log_request,
    other_protocol_reason,
    session_name,
)
from ..core.settings import ServerConfig
from .commands import ServerState
from .connection import ClientGone, Connection, IdleTimeout, LineTooLong, OtherProtocol
from .follow import follow

__all__ = ["Session", "until_reset"]


class Session:
    """One client connection, from accept to close."""

    def __init__(self, conn: Connection, host: str, number: int, config: ServerConfig,
                 state: ServerState, closing: asyncio.Event) -> None:
        self.conn = conn
        self.host = host
        self.system = session_name(number, host)
        self.config = config
        self.state = state
        self.closing = closing
        self.task = asyncio.current_task()
        #: The ``tail -F`` of a follow in progress; the server kills it at shutdown.
        self.following: asyncio.subprocess.Process | None = None

    @property
    def waiting(self) -> bool:
        """True while it waits for the client's next request (no command in flight)."""
        return self.conn.waiting

    async def run(self) -> bytes | None:
        """Serve the client until it is done and log why; return the goodbye.

        The goodbye is what :meth:`Connection.hang_up` sends on the way out (see
        the gevent engine's). A cancellation is the server's shutdown.
        """
        try:
            reason, goodbye = await self.serve(), b""
        except LineTooLong:
            reason, goodbye = TOO_LONG, protocol.LINE_TOO_LONG
        except IdleTimeout:
            reason, goodbye = IDLE, protocol.IDLE_TIMEOUT
        except ClientGone as gone:
            reason, goodbye = gone.reason, None
        except auth.NotAuthenticated as refused:
            reason, goodbye = refused.reason, refused.goodbye
        except OtherProtocol as other:
            reason, goodbye = other_protocol_reason(other.name), b""
        except asyncio.CancelledError:
            if not self.closing.is_set():
                raise
            reason, goodbye = SHUTDOWN, protocol.SHUTTING_DOWN
        log_lost(reason, self.system)
        return goodbye

    async def serve(self) -> str:
        """Answer request after request; the log's reason once the client is done."""
        conn, served = self.conn, self.state.stats.served
        authenticated = self.state.auth_token is None
        while not self.closing.is_set():
            line = await conn.read_line()
            if line is None:
                return CLEAN
            request = protocol.parse_request(line)
            if request is None:
                continue
            suspect = protocol.other_protocol(request, line)
            if suspect:
                raise OtherProtocol(suspect)
            if not self.config.quiet:
                log_request(self.host, protocol.loggable(request, line), self.system)
            if request.word in protocol.EXIT_WORDS:
                return CLEAN
            started = time.monotonic()
            if request.word == b"auth" or not authenticated:
                reply = self.authenticate(request, started)
                authenticated = True
            else:
                reply = await self.run_command(request)
            conn.write(reply)
            served(request.word)
            self.state.finished(self.system, request, reply, started)
        raise asyncio.CancelledError()  # shutdown began: say bye as for a cancel

    def authenticate(self, request: protocol.Request, started: float) -> bytes:
        """The reply to ``auth`` (or to any request before it); a refusal is audited,
        then ends the session (NotAuthenticated)."""
        try:
            return auth.reply_to(request, self.state.auth_token)
        except auth.NotAuthenticated as refused:
            self.state.finished(self.system, request, refused.goodbye, started)
            raise

    async def run_command(self, request: protocol.Request) -> bytes:
        """The reply to ``request``; a reset while a command waits raises ClientGone."""
        if request.word == b"follow":  # streams to the client until stopped
            return await follow(self, request.arg)
        command = self.state.commands.get(request.word)
        if command is None:
            return protocol.COMMAND_NOT_FOUND
        try:
            if not command.waits:
                return await command.run(self.state, request.arg, self.system)
            await self.conn.flush()  # replies owed go out before a command that may take a while
            return await until_reset(self.conn, command.run(self.state, request.arg,
                                                             self.system))
        except Exception as exc:  # a bug of ours or a plugin's: one request lost, not the session
            return internal_error(request.word, exc, self.system)


async def until_reset(conn: Connection, work: Awaitable[bytes]) -> bytes:
    """Await ``work``; if the client resets meanwhile, cancel it and raise ClientGone.

    The watcher reads what the client sends next into the line buffer, so
    nothing is lost: after data or EOF there is nothing more to watch for.
    """
    command = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(conn.receive()) if not (conn.lines or conn.eof) else None
    try:
        if watcher is not None:
            await asyncio.wait({command, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not command.done() and watcher.exception() is not None:
                raise watcher.exception()
        return await command
    finally:
        command.cancel()
        if watcher is not None:
            watcher.cancel()
            # Its read must be over before the session reads again (a StreamReader
            # takes one reader at a time).
            await asyncio.wait({watcher})
