"""One client session, run start to finish in the greenlet the server spawned for it.

Read a line, run the command, write the reply: :meth:`Session.serve` is that
loop, in that order. Every way a session can end is an exception caught in
:meth:`Session.run`, which logs why and says what to tell the client on the way
out; the server then frees the session's slot and hangs up.

The session does not know the server. It is given the settings, the server's
state and its ``closing`` event; the server, which knows its
sessions, ends one that waits for a request with ``kill(ShuttingDown)`` at
shutdown, or ``kill(IdleTimeout)`` when it has waited too long.
While a command waits, a watcher greenlet ends the session with
:class:`ClientGone` if the client resets, and the command's ``finally`` blocks
clean up (``lastlog`` kills and reaps its ``tail``).
"""

from __future__ import annotations

import socket
import time

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.socket import wait_read

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
from .connection import (
    ClientGone,
    Connection,
    IdleTimeout,
    LineTooLong,
    OtherProtocol,
    peek,
)
from .fast_subprocess import Popen
from .follow import follow

__all__ = ["Session", "ShuttingDown"]


class ShuttingDown(GreenletExit):
    """Raised in a session at shutdown: it says bye and closes.

    A ``GreenletExit``, so that one arriving after the session has ended (while
    it lingers) just ends its greenlet, as gevent's own ``kill()`` does.
    """


class Session:
    """One client connection, from accept to close."""

    __slots__ = ("conn", "host", "system", "config", "state", "closing", "greenlet",
                 "following")

    def __init__(self, sock: socket.socket, host: str, number: int, config: ServerConfig,
                 state: ServerState, closing: Event) -> None:
        self.conn = Connection(sock, config.max_line, config.idle_timeout)
        self.host = host
        self.system = session_name(number, host)
        self.config = config
        self.state = state
        self.closing = closing
        self.greenlet = gevent.getcurrent()
        #: The ``tail -F`` of a follow in progress; the server kills it at shutdown.
        self.following: Popen | None = None

    @property
    def waiting(self) -> bool:
        """True while it waits for the client's next request (no command in flight)."""
        return self.conn.idle_since is not None

    def run(self) -> bytes | None:
        """Serve the client until it is done and log why; return the goodbye.

        The goodbye is what :meth:`Connection.hang_up` sends on the way out:
        b"" for nothing more (a clean end, or another protocol on the port), a
        last line ("Line too long.", a bye, "Authentication failed."), or None
        when the client is gone. Nothing the client does makes it raise.
        """
        try:
            reason, goodbye = self.serve(), b""
        except LineTooLong:
            reason, goodbye = TOO_LONG, protocol.LINE_TOO_LONG
        except IdleTimeout:
            reason, goodbye = IDLE, protocol.IDLE_TIMEOUT
        except ShuttingDown:
            reason, goodbye = SHUTDOWN, protocol.SHUTTING_DOWN
        except ClientGone as gone:
            reason, goodbye = gone.reason, None
        except auth.NotAuthenticated as refused:
            reason, goodbye = refused.reason, refused.goodbye
        except OtherProtocol as other:  # no reply, but a FIN: linger past what it sent
            reason, goodbye = other_protocol_reason(other.name), b""
        log_lost(reason, self.system)
        return goodbye

    def serve(self) -> str:
        """Answer request after request; the log's reason once the client is done."""
        conn, served = self.conn, self.state.stats.served
        authenticated = self.state.auth_token is None
        while not self.closing.is_set():
            line = conn.read_line()
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
                reply = self.run_command(request)
            conn.write(reply)
            served(request.word)
            self.state.finished(self.system, request, reply, started)
        raise ShuttingDown()

    def authenticate(self, request: protocol.Request, started: float) -> bytes:
        """The reply to ``auth`` (or to any request before it); a refusal is audited,
        then ends the session (NotAuthenticated)."""
        try:
            return auth.reply_to(request, self.state.auth_token)
        except auth.NotAuthenticated as refused:
            self.state.finished(self.system, request, refused.goodbye, started)
            raise

    def run_command(self, request: protocol.Request) -> bytes:
        """The reply to ``request``; a reset while a command waits raises ClientGone."""
        if request.word == b"follow":  # streams to the client until stopped
            return follow(self, request.arg)
        command = self.state.commands.get(request.word)
        if command is None:
            return protocol.COMMAND_NOT_FOUND
        try:
            if not command.waits:
                return command.run(self.state, request.arg, self.system)
            self.conn.flush()  # replies owed go out before a command that may take a while
            watcher = watch_for_reset(self.conn.sock, command.watch_after)
            try:
                return command.run(self.state, request.arg, self.system)
            finally:
                watcher.kill(block=False)
        except Exception as exc:  # a bug of ours or a plugin's: one request lost, not the session
            return internal_error(request.word, exc, self.system)


def watch_for_reset(sock: socket.socket, after: float = 0.0) -> gevent.Greenlet:
    """Until the greenlet returned is killed, a client reset raises :class:`ClientGone`
    in this greenlet.

    A client that reset already gets no work done for it at all: ClientGone at
    once (a reset storm must not start a ``tail`` per gone client). After that
    the watcher starts once the command has run ``after`` seconds: a command done
    by then never needs it, and a greenlet that never ran costs little to kill,
    while one that ran costs a stack (measured in docs/performance.md).
    """
    try:
        peek(sock)  # None, the usual answer: nothing from the client
    except OSError:
        raise ClientGone() from None
    return gevent.spawn_later(after, kill_on_reset, sock, gevent.getcurrent())


def kill_on_reset(sock: socket.socket, session: gevent.Greenlet) -> None:
    """Kill ``session`` with ClientGone if the client resets; return once it sends or closes.

    It peeks, so the session still reads whatever arrived. After data or EOF
    there is nothing more to watch for: a half-closed client gets its replies.
    """
    while True:
        wait_read(sock.fileno())
        if sock.fileno() == -1:
            # The session ended its command and hung up before its kill of this
            # greenlet came round: woken in the same loop turn, there is no client left.
            return
        try:
            if peek(sock) is not None:  # woken, but maybe nothing there after all
                return
        except OSError:
            session.kill(ClientGone, block=False)
            return
