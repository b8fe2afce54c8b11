"""The gevent command server: a StreamServer that runs a :class:`Session` per client.

Around the sessions it keeps what the spec asks: max clients (refused, not
queued), the idle timeout (one reaper, not a timer per read), graceful shutdown
on SIGTERM/SIGINT, and the log.
"""

from __future__ import annotations

import gc
import signal
import socket
import time

import gevent
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import greenlet

from . import protocol
from .commands import Runtime
from .config import BACKLOG, LINGER_SECONDS, ServerConfig, describe_lastlog_source, format_address
from .errors import cannot_listen
from .logs import (
    REFUSED,
    flush_logs,
    install_flush_timer,
    log,
    log_connection,
    log_lost,
    reopen_log_files,
    session_system,
)
from .session import Runners, Session, ShuttingDown, linger_close

__all__ = ["CommandServer", "run"]


class CommandServer(StreamServer):
    """Accepts connections and runs a :class:`Session` for each, up to max clients.

    gevent's ``Pool`` would queue the extra clients unanswered, so the limit is
    our own count, and the refused get a reply at once.
    """

    def __init__(self, config: ServerConfig, listener: socket.socket | None = None) -> None:
        if listener is None:
            super().__init__((config.host, config.port), backlog=BACKLOG)
        else:  # a socket already listening (--workers): gevent takes no backlog then
            super().__init__(listener)
        self.config = config
        self.runtime = Runtime.from_config(config)
        self.sessions: set[Session] = set()
        self.runners = Runners()
        self.accepted = 0
        self.closing = False
        self._idle = Event()
        self._drained = Event()
        self._reaper: gevent.Greenlet | None = None

    def start(self) -> None:
        """Listen, and start the idle reaper when there is an idle timeout."""
        super().start()
        if self.config.idle_timeout:
            self._reaper = gevent.spawn(self._reap_idle_sessions)

    def handle(self, sock: socket.socket, address: tuple) -> None:
        """Take a new connection: refuse it, or start its session (which parks)."""
        number, self.accepted = self.accepted, self.accepted + 1
        host = address[0]
        log_connection(host)
        if len(self.sessions) >= self.config.max_clients or self.closing:
            try:
                sock.sendall(protocol.TOO_MANY)
            except OSError:
                pass
            log_lost(REFUSED, session_system(number, host))
            linger_close(sock)
            return
        try:
            session = Session(self, sock, host, number)
        except BaseException:
            sock.close()
            raise
        self.sessions.add(session)
        session.restart_idle_clock()
        session.park()

    def do_close(self, sock: socket.socket, *args: object) -> None:
        """Not when handle() returns: a parked session outlives it and closes itself."""

    def forget(self, session: Session) -> None:
        """A session ended: free its slot; wake a shutdown waiting for the last one."""
        self.sessions.discard(session)
        self.session_idle()
        if self.closing and not self.sessions:
            self._drained.set()

    def session_idle(self) -> None:
        """A session finished a batch of commands; wake a waiting shutdown."""
        if self.closing and not any(s.busy for s in self.sessions):
            self._idle.set()

    def _reap_idle_sessions(self) -> None:
        # One greenlet checks every session a few times per timeout period, instead
        # of a timer per read; a session is overdue by at most a quarter period.
        interval = min(1.0, self.config.idle_timeout / 4)
        loop = self.loop
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for session in list(self.sessions):
                if not session.deadline or now < session.deadline:
                    continue
                if session.greenlet is None:
                    gevent.spawn(session.time_out)
                elif session.writing:
                    # Checked again in the hub: the reply may be taken by then.
                    loop.run_callback(session.expire)

    def shutdown(self, grace: float) -> None:
        """Stop accepting, let commands finish for ``grace`` seconds, then say bye.

        Every session still open gets ``SHUTTING_DOWN``; returns once all are closed.
        """
        self.closing = True
        self.close()
        if self._reaper is not None:
            self._reaper.kill()
        log("Shutting down: stopped listening; %g seconds' grace for commands" % grace)
        self.session_idle()
        if self.sessions:
            self._idle.wait(grace)
        for session in list(self.sessions):
            if session.greenlet is None:
                gevent.spawn(session.say_goodbye)
            else:
                session.interrupt(ShuttingDown)
        if self.sessions:
            self._drained.wait(LINGER_SECONDS + 1)
        # Whatever still hangs (a client that reads nothing) is cut off.
        for session in list(self.sessions):
            session.interrupt(ShuttingDown)
        if self.sessions:
            self._drained.wait(1)
        self.runners.stop()
        gevent.sleep(0)  # let the idle runners end
        self.runtime.pool.kill()


def run(config: ServerConfig, listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    Logging must be set up by the caller. Raises :class:`BindError` when the
    address cannot be bound. With ``listener`` (a worker of ``--workers``), the
    socket is already bound and the supervisor has announced it.
    """
    server = CommandServer(config, listener)
    install_flush_timer(call_later)
    stop = Event()
    # Handlers first: whoever waits for the "starting on" line may signal at once.
    handlers = [gevent.signal_handler(signum, stop.set)
                for signum in (signal.SIGTERM, signal.SIGINT)]
    handlers.append(gevent.signal_handler(signal.SIGHUP, reopen_log_files))
    try:
        try:
            server.start()
        except OSError as exc:
            server.runtime.pool.kill()
            raise cannot_listen(format_address(config.host, config.port), exc) from None
        if listener is None:
            log("greencmd.server.CommandServer starting on %s"
                % format_address(*server.address[:2]))
            log(describe_lastlog_source(server.runtime.lastlog_source,
                                        server.runtime.lastlog_tried))
        stop.wait()
        server.shutdown(config.grace)
    finally:
        for handler in handlers:
            handler.cancel()
    log("Stopped with %d greenlets left beside the hub and main" % live_greenlets())
    log("Main loop terminated.")
    flush_logs()


def call_later(delay: float, callback) -> None:
    """Run ``callback`` in the hub after ``delay`` seconds: a timer, no greenlet."""
    timer = gevent.get_hub().loop.timer(delay)

    def fire() -> None:
        timer.close()
        callback()

    timer.start(fire)


def live_greenlets() -> int:
    """Greenlets still alive other than the hub and this one: 0 after a clean stop."""
    # gc is slow, but this runs once, at exit, to prove sessions leave nothing behind.
    keep = {gevent.getcurrent(), gevent.get_hub()}
    return sum(1 for obj in gc.get_objects()
               if isinstance(obj, greenlet) and obj and not obj.dead and obj not in keep)
