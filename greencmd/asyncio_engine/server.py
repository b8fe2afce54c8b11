"""The asyncio command server: an accept loop and a :class:`Session` per connection.

Each connection is one coroutine, from accept to close. Around the sessions the
server keeps what the spec asks: max clients (refused at once, not queued),
graceful shutdown on SIGTERM/SIGINT, log reopening on SIGHUP, and the log itself.
Compare ``gevent_engine/server.py`` and ``twisted_engine/server.py``.

The connections are accepted by a loop of our own (``loop.sock_accept()``), not
by ``asyncio.start_server``, which has no way to stop accepting: past the
sessions and the refusals in progress the loop waits until one ends, so the rest
of a flood waits in the kernel's listen queue, as it does with the other
engines. Each accepted socket gets its streams as ``start_server`` would make
them (:func:`accepted_streams`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from ..core import protocol
from ..core.errors import EXHAUSTED_PAUSE, describe_os_error
from ..core.listeners import (
    listen_tcp,
    listen_unix,
    listening_on,
    peer_name,
    remove_socket,
)
from ..core.logs import (
    REFUSED,
    AcceptFailureLog,
    flush_logs,
    install_flush_timer,
    log,
    log_connection,
    log_lost,
    session_name,
)
from ..core.settings import LINGER_SECONDS, REFUSING, ServerConfig
from ..core.signals import let_go_of_signals
from ..core.startup import startup_lines
from ..core.systemd import Notifier
from .commands import ServerState
from .connection import Connection
from .metrics import serve_metrics
from .processes import kill_group
from .session import Session
from .tls import tls_context, tls_handshake

__all__ = ["CommandServer", "run", "serve", "quiet_exceptions"]


class CommandServer:
    """Accepts connections and runs a :class:`Session` for each, up to max clients.

    The limit is our own count of open sessions, so the client over it gets its
    refusal at once. The connections (sessions plus refusals in progress) are
    bounded too: past ``max_clients + REFUSING`` of them, the accept loop waits
    until one ends.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: set[Session] = set()
        self.state = ServerState.from_config(config, self.sessions)
        self.closing = asyncio.Event()
        self.tls = tls_context(config)
        #: Each connection's task (sessions, refusals, hang-ups), from its accept on,
        #: and its writer; None until its streams are made and while its TLS
        #: handshake runs (shutdown cancels that, see tls_handshake).
        self.connections: dict[asyncio.Task, asyncio.StreamWriter | None] = {}
        self.limit = config.max_clients + REFUSING
        self.room = asyncio.Event()  # set when a connection ends
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task | None = None
        self._exhausted = AcceptFailureLog()

    def reopen_files(self) -> None:
        """On SIGHUP: log files, auth token and TLS files again (``BaseState.reopen_files``)."""
        self.tls = self.state.reopen_files(self.tls, lambda: tls_context(self.config))

    def start(self, listener: socket.socket | None = None) -> str:
        """Listen (or serve ``listener``, bound by ``--workers`` or systemd) and start
        accepting; where, as the log names it. Raises BindError."""
        config = self.config
        if listener is None:
            listener = (listen_unix(config.unix, config.unix_mode) if config.unix
                        else listen_tcp(config.host, config.port))
        listener.setblocking(False)  # the loop waits for it
        self.listener = listener
        self.accepting = asyncio.create_task(self.accept(listener))
        return listening_on(listener)

    async def accept(self, listener: socket.socket) -> None:
        """Accept connections and start a task for each, for ever (shutdown cancels it).

        At the bound it waits for a connection to end before it accepts again. A
        failed accept never ends it: a client gone before its accept is passed
        over; otherwise (out of descriptors, most often) it says so, once a second
        at most, and pauses EXHAUSTED_PAUSE; open sessions go on meanwhile.
        """
        loop = asyncio.get_running_loop()
        while True:
            while len(self.connections) >= self.limit:
                self.room.clear()
                await self.room.wait()
            try:
                sock, address = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # not a busy loop, whatever it is
                self._exhausted.say(describe_os_error(exc))
                await asyncio.sleep(EXHAUSTED_PAUSE)
                continue
            # Counted from its accept, not from when its task first runs.
            self.connections[loop.create_task(self.handle(sock, address))] = None

    async def handle(self, sock: socket.socket, address: object) -> None:
        """Serve one connection in this task, from accept to close (or refuse it)."""
        task = asyncio.current_task()
        try:
            try:
                reader, writer = await accepted_streams(sock)
            except BaseException:
                sock.close()  # it has no transport to close it
                raise
            if self.tls is None:
                self.connections[task] = writer
            stats = self.state.stats
            number, stats.accepted = stats.accepted, stats.accepted + 1
            host = peer_name(sock, address)
            log_connection(host)
            if self.tls is not None:
                if not await tls_handshake(self.tls, writer, session_name(number, host)):
                    return
                self.connections[task] = writer
            await self.serve_session(Connection(reader, writer, self.config.max_line,
                                                self.config.idle_timeout), host, number)
        except asyncio.CancelledError:
            # Shutdown cancels a session that waits for its next request; when the
            # client's next bytes, or its end, came in the same turn of the loop, the
            # cancel lands once the session is over, on its way out. The connection is
            # closed by then: end quietly.
            if not self.closing.is_set():
                raise
        finally:
            del self.connections[task]
            self.room.set()

    async def serve_session(self, conn: Connection, host: str, number: int) -> None:
        """Run a :class:`Session` for the connection, or refuse it past max clients."""
        if len(self.sessions) >= self.config.max_clients or self.closing.is_set():
            self.state.stats.refused += 1
            log_lost(REFUSED, session_name(number, host))
            await conn.hang_up(protocol.TOO_MANY)
            return
        session = Session(conn, host, number, self.config, self.state, self.closing)
        self.sessions.add(session)
        try:
            goodbye = await session.run()
        finally:
            self.sessions.discard(session)  # a session saying goodbye holds no slot
        await conn.hang_up(goodbye)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let commands finish for ``grace`` seconds, then say bye.

        Sessions waiting for a request are cancelled at once (they say bye), and
        follows end at once; commands in flight get the grace, then their
        sessions are cancelled too: the cancellation stops their work.
        """
        self.closing.set()
        self.accepting.cancel()
        await asyncio.wait([self.accepting])
        self.listener.close()
        log("Shutting down: stopped listening; %g seconds' grace for commands" % grace)
        for session in list(self.sessions):
            if session.waiting:
                session.task.cancel()
            elif session.following is not None:
                kill_group(session.following)
        busy = [session.task for session in self.sessions]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for session in list(self.sessions):
            session.task.cancel()
        # Sessions say bye and linger; refusals linger too. Then the rest is cut off,
        # as a reset would: each one's coroutine sees its connection lost and ends
        # the way a reset ends it, already tested. (One still in its TLS handshake
        # has no stream to cut: it is cancelled, and ends without a session.)
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=LINGER_SECONDS + 1)
        for task, writer in self.connections.items():
            if writer is None:
                task.cancel()
            else:
                writer.transport.abort()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=1)
        self.state.pool.shutdown(wait=False, cancel_futures=True)


async def accepted_streams(sock: socket.socket) -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]:
    """A stream reader and writer over ``sock``, accepted here, made as ``start_server``
    makes them.

    ``connect_accepted_socket`` is asyncio's way to hand it an accepted socket; a
    ``StreamReaderProtocol`` given a callback is a server's side of the stream, so
    ``StreamWriter.start_tls()`` makes the server's side of a TLS handshake.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    made: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
    protocol = asyncio.StreamReaderProtocol(reader, lambda _, writer: made.set_result(writer))
    await loop.connect_accepted_socket(lambda: protocol, sock)
    return reader, await made


def quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's exception handler: out of descriptors is one line a second, never a traceback.

    (The command port's accept loop handles its own errors; ``start_server``, which
    serves ``--metrics``, reports them here, and pauses accepting by itself.)
    """
    exc = context.get("exception")
    message = context.get("message", "")
    if isinstance(exc, OSError) and "accept" in message:
        _accept_failures.say(describe_os_error(exc))
    elif isinstance(exc, (ConnectionError, TimeoutError)):
        return  # a client that went away mid-close: nothing to say
    elif isinstance(exc, ValueError) and "._start_serving(" in message:
        # asyncio's retry of accepting, a second after it ran out of descriptors,
        # come after shutdown closed the listener: nothing is left to accept on.
        return
    elif isinstance(exc, asyncio.InvalidStateError) and "._sock_accept(" in message:
        # CPython gh-153761 (fixed in later releases): shutdown cancelled the accept
        # loop in the turn its listener became readable, and asyncio accepted one
        # more connection for the cancelled wait, then dropped (closed) it. That
        # client is told nothing, as one still in the listen queue is not.
        return
    else:
        log("asyncio: %s%s" % (message or "error", "" if exc is None else ": %s" % (
            describe_os_error(exc) if isinstance(exc, OSError)
            else "%s: %s" % (type(exc).__name__, exc))))


_accept_failures = AcceptFailureLog()


async def serve(config: ServerConfig, listener: socket.socket | None = None,
                supervised: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. Raises BindError.

    ``listener``: a socket already listening (passed by systemd, or shared by
    ``--workers``); ``supervised``: a worker, whose supervisor announces the server.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_exceptions)
    server = CommandServer(config)
    notifier = Notifier()
    stop = asyncio.Event()
    # Handlers first: whoever waits for the "starting on" line may signal at once.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reopen_files)
    stop_flushing = install_flush_timer(lambda delay, flush: loop.call_later(delay,
                                                                             flush).cancel)
    ticks = metrics = None
    stopped = False
    try:
        if config.metrics:  # first: a port it cannot have must end us before any client comes
            metrics = await serve_metrics(server.state.metrics, *config.metrics)
        where = server.start(listener)
        if supervised:
            log("Serving in worker process %d" % os.getpid())
        else:
            log("greencmd.asyncio_engine.server.CommandServer starting on %s" % where)
            for line in startup_lines(config, server.state.lastlog, server.state.help):
                log(line)
            notifier.ready(where)
            if notifier.every:
                ticks = asyncio.create_task(tick(notifier, server.sessions))
        await stop.wait()
        notifier.stopping()
        await server.shutdown(config.grace)
        stopped = True
    finally:
        if ticks is not None:
            ticks.cancel()
        if metrics is not None:
            metrics.close()
        # Stopped, the process exits now: no late signal may kill it (core/signals.py).
        let_go_of_signals(loop.remove_signal_handler, stopped)
        stop_flushing()
        if config.unix and listener is None:
            remove_socket(config.unix)
    log("Stopped: every session closed, no command left running.")
    log("Main loop terminated.")
    flush_logs()


async def tick(notifier: Notifier, sessions: set) -> None:
    """Tell systemd how many sessions are open (and ping its watchdog), for ever."""
    while True:
        await asyncio.sleep(notifier.every)
        notifier.tick(len(sessions))


def run(config: ServerConfig, listener: socket.socket | None = None,
        supervised: bool = False) -> None:
    """Serve with asyncio until SIGTERM or SIGINT; raises BindError."""
    asyncio.run(serve(config, listener, supervised))



