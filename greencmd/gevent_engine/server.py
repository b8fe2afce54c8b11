"""The gevent command server: a StreamServer that runs a :class:`Session` per connection.

Each connection gets the greenlet StreamServer spawns for it and keeps it from
accept to close. Around the sessions the server keeps what the spec asks: max
clients (refused at once, not queued), graceful shutdown on SIGTERM/SIGINT,
log reopening on SIGHUP, and the log itself.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from ..core import protocol
from ..core.errors import EXHAUSTED_PAUSE, OUT_OF_DESCRIPTORS, cannot_listen, describe_os_error
from ..core.listeners import listen_unix, listening_on, peer_name, remove_socket
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
from ..core.settings import (
    BACKLOG,
    LINGER_SECONDS,
    REFUSING,
    ServerConfig,
    format_address,
)
from ..core.signals import let_go_of_signals
from ..core.startup import startup_lines
from ..core.systemd import Notifier
from .bounded import BoundedServer
from .commands import ServerState
from .connection import Connection, IdleTimeout, nothing_pending
from .metrics import serve_metrics
from .processes import kill_group
from .session import Session, ShuttingDown
from .tls import tls_context, tls_handshake

__all__ = ["CommandServer", "run", "start_log_flushing", "configure_gevent"]


class CommandServer(BoundedServer):
    """Accepts connections and runs a :class:`Session` for each, up to max clients.

    The limit is our own count of open sessions, so the client over it gets its
    refusal at once. The greenlets (sessions plus refusals in progress) are
    bounded too (:class:`BoundedServer`): past ``max_clients + REFUSING`` of
    them, StreamServer stops accepting until one ends.
    """

    def __init__(self, config: ServerConfig, listener: socket.socket | None = None) -> None:
        limit = config.max_clients + REFUSING
        if listener is None:
            super().__init__((config.host, config.port), backlog=BACKLOG, limit=limit)
        else:  # a socket already listening (--workers): gevent takes no backlog then
            super().__init__(listener, limit=limit)
        self.config = config
        self.sessions: set[Session] = set()
        self.state = ServerState.from_config(config, self.sessions)
        self.closing = Event()
        self.tls = tls_context(config)
        self._reaper: gevent.Greenlet | None = None
        self._exhausted = AcceptFailureLog()

    def start(self) -> None:
        """Listen, and start the idle reaper when there is an idle timeout."""
        super().start()
        if self.config.idle_timeout:
            self._reaper = gevent.spawn(self._reap_idle_sessions)

    def do_read(self):
        """Accept a connection; when descriptors run out, say so and pause accepting.

        gevent would print a traceback for each failed accept. Open sessions go
        on meanwhile, and accepting resumes by itself.
        """
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            self._exhausted.say(describe_os_error(exc))
        self.stop_accepting()
        gevent.spawn_later(EXHAUSTED_PAUSE, self._resume_accepting)
        return None

    def reopen_files(self) -> None:
        """On SIGHUP: log files, auth token and TLS files again (``BaseState.reopen_files``)."""
        self.tls = self.state.reopen_files(self.tls, lambda: tls_context(self.config))

    def _resume_accepting(self) -> None:
        if not self.closing.is_set():
            self.start_accepting()

    def handle(self, sock: socket.socket, address: tuple) -> None:
        """Serve one connection in this greenlet, from accept to close (or refuse it)."""
        stats = self.state.stats
        number, stats.accepted = stats.accepted, stats.accepted + 1
        host = peer_name(sock, address)
        log_connection(host)
        if self.tls is None:
            self.serve_session(sock, host, number)
            return
        sock = tls_handshake(self.tls, sock, session_name(number, host))
        if sock is None:
            return
        try:
            self.serve_session(sock, host, number)
        finally:
            sock.close()  # the TLS socket is ours; StreamServer closes the one it accepted

    def serve_session(self, sock: socket.socket, host: str, number: int) -> None:
        """Run a :class:`Session` for the connection, or refuse it past max clients."""
        stats = self.state.stats
        if len(self.sessions) >= self.config.max_clients or self.closing.is_set():
            stats.refused += 1
            refuse(sock, session_name(number, host))
            return
        session = Session(sock, host, number, self.config, self.state, self.closing)
        self.sessions.add(session)
        try:
            goodbye = session.run()
        finally:
            self.sessions.discard(session)  # a session saying goodbye holds no slot
        session.conn.hang_up(goodbye)

    def _reap_idle_sessions(self) -> None:
        """End sessions that have waited longer than ``--idle-timeout`` for a line.

        One greenlet looks at every session a few times per period, so a session
        is overdue by a quarter period at most. It ends only a session with
        nothing from its client pending (no byte, EOF or reset): that session
        cannot wake before the kill lands, so the kill lands in its wait.
        """
        idle = self.config.idle_timeout
        while True:
            gevent.sleep(min(1.0, idle / 4))
            now = time.monotonic()
            for session in list(self.sessions):
                since = session.conn.idle_since
                if since is None or now - since < idle:
                    continue
                if nothing_pending(session.conn.sock):
                    session.greenlet.kill(IdleTimeout, block=False)

    def shutdown(self, grace: float) -> None:
        """Stop accepting, let commands finish for ``grace`` seconds, then say bye.

        Sessions waiting for a request get the bye at once, and follows end at
        once (``End follow``, then the bye); a session whose command finishes in
        time says bye itself once it has sent the reply. Work still running when
        the grace ends is abandoned (``tail`` killed, the hash told to stop).
        Returns once every session is closed.
        """
        self.closing.set()
        self.close()
        if self._reaper is not None:
            self._reaper.kill()
        log("Shutting down: stopped listening; %g seconds' grace for commands" % grace)
        for session in list(self.sessions):
            if session.waiting:
                session.greenlet.kill(ShuttingDown, block=False)
            elif session.following is not None:
                kill_group(session.following)
        gevent.joinall(self._greenlets(), timeout=grace)
        gevent.killall(self._greenlets(), ShuttingDown, block=False)
        # Sessions say bye and linger; refusals linger too. Then the rest is cut off.
        # (joinall and join return at their timeout; killall(timeout=) would raise.)
        gevent.joinall(list(self.handlers), timeout=LINGER_SECONDS + 1)
        gevent.killall(list(self.handlers), block=False)
        gevent.joinall(list(self.handlers), timeout=1)
        self.state.pool.kill()

    def _greenlets(self) -> list[gevent.Greenlet]:
        return [session.greenlet for session in self.sessions]


def refuse(sock: socket.socket, system: str) -> None:
    """Tell a client over the limit so, as a session says its last line; never raises."""
    log_lost(REFUSED, system)
    Connection(sock, max_line=0, idle_timeout=0).hang_up(protocol.TOO_MANY)


def run(config: ServerConfig, listener: socket.socket | None = None,
        supervised: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    Logging must be set up by the caller. Raises :class:`BindError` when the
    address cannot be bound. ``listener``: a socket already listening (one that
    systemd passed, or the one ``--workers`` share); ``supervised``: a worker of
    ``--workers``, whose supervisor announces the server and tells systemd.
    """
    configure_gevent()
    ours = listener is None  # bound here: a Unix socket's file is removed at the end
    if ours and config.unix:
        listener = listen_unix(config.unix, config.unix_mode)
    server = CommandServer(config, listener)
    notifier = Notifier()
    stop_flushing = start_log_flushing()
    stop = Event()
    # Handlers first: whoever waits for the "starting on" line may signal at once.
    handlers = {signum: gevent.signal_handler(signum, stop.set)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    handlers[signal.SIGHUP] = gevent.signal_handler(signal.SIGHUP, server.reopen_files)
    ticks = metrics = None
    stopped = False
    try:
        try:
            server.start()
        except OSError as exc:
            server.state.pool.kill()
            raise cannot_listen(format_address(config.host, config.port), exc) from None
        if config.metrics:
            metrics = serve_metrics(server.state.metrics, *config.metrics)
        if supervised:
            log("Serving in worker process %d" % os.getpid())
        else:
            where = listening_on(server.socket)
            log("greencmd.server.CommandServer starting on %s" % where)
            for line in startup_lines(config, server.state.lastlog, server.state.help):
                log(line)
            notifier.ready(where)
            if notifier.every:
                ticks = gevent.spawn(tick, notifier, server.sessions)
        stop.wait()
        notifier.stopping()
        server.shutdown(config.grace)
        stopped = True
    finally:
        if ticks is not None:
            ticks.kill()
        if metrics is not None:
            metrics.stop(timeout=1)
        # Stopped, the process exits now: no late signal may kill it (core/signals.py).
        let_go_of_signals(lambda signum: handlers[signum].cancel(), stopped)
        stop_flushing()
        if ours and config.unix:
            remove_socket(config.unix)
    left = running_greenlets()
    if left:
        log("Stopped, but %d greenlets were still running: a bug in greencmd, please report it"
            % left)
    else:
        log("Stopped: every session closed, no command left running.")
    log("Main loop terminated.")
    flush_logs()


def configure_gevent() -> None:
    """gevent's own settings for a server, unless the environment sets them.

    ``track_greenlet_tree`` off: gevent would otherwise record, for every
    greenlet, who spawned it and the stack it was spawned from, for debugging
    tools greencmd does not use; gevent documents that turning it off makes
    spawning faster (measured: a third of a spawn's cost, docs/performance.md).
    ``GEVENT_TRACK_GREENLET_TREE=1`` turns it back on.
    """
    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False


def tick(notifier: Notifier, sessions: set) -> None:
    """Tell systemd how many sessions are open (and ping its watchdog), for ever."""
    while True:
        gevent.sleep(notifier.every)
        notifier.tick(len(sessions))


def start_log_flushing() -> Callable[[], None]:
    """Flush the log shortly after lines are written; returns the function that stops it."""
    return install_flush_timer(lambda delay, flush: gevent.spawn_later(delay, flush).kill)


def running_greenlets() -> int:
    """gevent greenlets still running beside this one: 0 after a clean stop."""
    # gc is slow, but this runs once, at exit, to prove sessions leave nothing behind.
    me = gevent.getcurrent()
    return sum(1 for obj in gc.get_objects()
               if isinstance(obj, gevent.Greenlet) and obj is not me and not obj.dead)
