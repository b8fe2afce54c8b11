"""The asyncio command server: ``asyncio.start_server`` and a :class:`Session` per connection.

Each connection is one coroutine, from accept to close. Around the sessions the
server keeps what the spec asks: max clients (refused at once), graceful
shutdown on SIGTERM/SIGINT, log reopening on SIGHUP, and the log itself.
Compare ``gevent_engine/server.py`` and ``twisted_engine/server.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from ..core import protocol
from ..core.errors import cannot_listen, describe_os_error
from ..core.listeners import (
    listen_unix,
    listening_on,
    peer_name,
    remove_socket,
    unix_address,
)
from ..core.logs import (
    REFUSED,
    AcceptFailureLog,
    flush_logs,
    install_flush_timer,
    log,
    log_connection,
    log_lost,
    reopen_log_files,
    session_name,
)
from ..core.settings import BACKLOG, LINGER_SECONDS, ServerConfig, format_address
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
    """Accepts connections and runs a :class:`Session` for each, up to max clients."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: set[Session] = set()
        self.state = ServerState.from_config(config, self.sessions)
        self.closing = asyncio.Event()
        self.tls = tls_context(config)
        #: Each connection's task (sessions, refusals, hang-ups) and its writer; None
        #: while its TLS handshake runs (shutdown cancels that, see tls_handshake).
        self.connections: dict[asyncio.Task, asyncio.StreamWriter | None] = {}
        self.server: asyncio.Server | None = None

    async def start(self, listener: socket.socket | None = None) -> str:
        """Listen (or serve ``listener``, bound by ``--workers``); where, as the log names it.

        Raises BindError.
        """
        config = self.config
        if listener is not None:
            serve = (asyncio.start_unix_server if listener.family == socket.AF_UNIX
                     else asyncio.start_server)
            # asyncio listens again on a socket it is given: with our backlog, not its 100.
            self.server = await serve(self.handle, sock=listener, backlog=BACKLOG)
            return listening_on(listener)
        if config.unix:
            self.server = await asyncio.start_unix_server(
                self.handle, sock=listen_unix(config.unix, config.unix_mode), backlog=BACKLOG)
            return unix_address(config.unix)
        try:
            self.server = await asyncio.start_server(self.handle, config.host, config.port,
                                                     backlog=BACKLOG, reuse_address=True)
        except OSError as exc:
            raise cannot_listen(format_address(config.host, config.port), exc) from None
        return format_address(*self.server.sockets[0].getsockname()[:2])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection in this coroutine, from accept to close (or refuse it)."""
        task = asyncio.current_task()
        self.connections[task] = None if self.tls else writer
        try:
            stats = self.state.stats
            number, stats.accepted = stats.accepted, stats.accepted + 1
            host = peer_name(writer.get_extra_info("socket"),
                             writer.get_extra_info("peername") or ("",))
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
            # closed by then: end quietly, not as a task start_server calls unhandled.
            if not self.closing.is_set():
                raise
        finally:
            del self.connections[task]

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
        self.server.close()
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
        # as a reset would: each one's coroutine sees its connection lost and returns.
        # (Not a cancel: a connection's task that ends cancelled is reported as an
        # unhandled error by start_server on Python 3.11 and 3.12. One still in its
        # TLS handshake is cancelled, and ends the handshake without a session.)
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


def quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's exception handler: out of descriptors is one line a second, never a traceback.

    asyncio pauses accepting by itself after such an error; open sessions go on.
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
    loop.add_signal_handler(signal.SIGHUP, reopen_log_files)
    stop_flushing = install_flush_timer(lambda delay, flush: loop.call_later(delay,
                                                                             flush).cancel)
    ticks = metrics = None
    stopped = False
    try:
        if config.metrics:  # first: a port it cannot have must end us before any client comes
            metrics = await serve_metrics(server.state.metrics, *config.metrics)
        where = await server.start(listener)
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



