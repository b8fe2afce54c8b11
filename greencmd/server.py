"""The gevent command server: a StreamServer, one greenlet per session.

:class:`Session` reads top to bottom like blocking code: read a line, run the
command, write the reply. :class:`CommandServer` adds what the spec asks around
it: max clients (refused, not queued), the session log, graceful shutdown.

Errors: a client can only end its own session. Resource handling: every child,
socket and greenlet a session makes is released when it ends, however it ends.
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
from .commands import COMMANDS, Runtime
from .config import (
    BACKLOG,
    LINGER_BYTES,
    LINGER_SECONDS,
    RECV_SIZE,
    ServerConfig,
    describe_lastlog_source,
    format_address,
)
from .errors import cannot_listen
from .logs import (
    CLEAN,
    IDLE,
    REFUSED,
    RESET,
    SHUTDOWN,
    TOO_LONG,
    flush_logs,
    install_flush_timer,
    log,
    log_connection,
    log_lost,
    log_request,
    reopen_log_files,
    session_system,
)

__all__ = ["CommandServer", "Session", "run"]

class ClientGone(Exception):
    """The client reset the connection, or a reply could not be written."""


class ShuttingDown(Exception):
    """Thrown into a session's greenlet when the server closes it at shutdown."""


class IdleTimeout(Exception):
    """Thrown into a session waiting for a request past its deadline."""


# What a session is blocked on, for the idle reaper.
REQUEST, REPLY = "request", "reply"


class Session:
    """One client connection, served by one greenlet from accept to close."""

    # Slots: thousands of idle sessions each save a __dict__.
    __slots__ = ("server", "sock", "host", "system", "busy", "idle_timeout", "deadline",
                 "waiting", "hub", "readable", "more_queued")

    def __init__(self, server: CommandServer, sock: socket.socket, host: str,
                 number: int) -> None:
        self.server = server
        self.sock = sock
        self.host = host
        self.system = session_system(number, host)
        self.busy = False
        self.idle_timeout = server.config.idle_timeout
        # Read by the server's reaper: when this session must have moved on, and
        # whether it waits for a request (idle) or for the client to take a reply.
        self.deadline = 0.0
        self.waiting: str | None = None
        # Waiting for readability before recv() saves the recv that would fail
        # with EAGAIN while the client waits for our reply; after a full read,
        # more is likely queued, so recv() goes first.
        self.hub = gevent.get_hub()
        self.readable = self.hub.loop.io(sock.fileno(), 1)
        self.more_queued = False

    def run(self) -> str:
        """Serve requests until the client leaves; log and return why it ended."""
        try:
            reason = self._serve()
        except ClientGone:
            reason = RESET
        except ShuttingDown:
            reason = SHUTDOWN
            self._send_quietly(protocol.SHUTTING_DOWN)
        finally:
            self.busy = False
            self.readable.close()
        log_lost(reason, self.system)
        return reason

    def _serve(self) -> str:
        lines = protocol.LineBuffer(self.server.config.max_line)
        self._restart_idle_clock()
        while True:
            data = self._receive()
            if data is None:
                self._send(protocol.IDLE_TIMEOUT)
                return IDLE
            if not self._answer(lines.feed(data) if data else lines.finish()):
                return CLEAN
            if lines.too_long:
                self._send(protocol.LINE_TOO_LONG)
                return TOO_LONG
            if not data:
                return CLEAN

    def _restart_idle_clock(self) -> None:
        if self.idle_timeout:
            self.deadline = time.monotonic() + self.idle_timeout

    def _receive(self) -> bytes | None:
        """The next bytes from the client; b"" at EOF, ``None`` after the idle timeout.

        The idle clock counts from the last complete line (or reply), so a client
        that trickles bytes without ever ending a line is timed out too. The
        server's reaper enforces it: a socket timeout would cost a gevent Timeout
        object on every recv that waits.
        """
        self.waiting = REQUEST
        try:
            if not self.more_queued:
                self.hub.wait(self.readable)
            data = self.sock.recv(RECV_SIZE)
            self.more_queued = len(data) == RECV_SIZE
            return data
        except IdleTimeout:
            return None
        except OSError as exc:
            raise ClientGone() from exc
        finally:
            self.waiting = None

    def _answer(self, lines: list[bytes]) -> bool:
        """Answer ``lines`` in order; False once the client said ``exit``.

        Replies of quick commands are gathered and sent in one write; before a
        command that waits, what is owed so far goes out first.
        """
        if not lines:
            return True
        self.busy = True
        try:
            more = self._run_lines(lines)
        finally:
            self.busy = False
            self.server.session_idle()
        self._restart_idle_clock()
        return more

    def _run_lines(self, lines: list[bytes]) -> bool:
        runtime, owed = self.server.runtime, []
        for line in lines:
            if self.server.closing:
                self._flush(owed)
                self._wait_for_shutdown()
            request = protocol.parse_request(line)
            if request is None:
                continue
            self._log_request(line)
            if request.word in protocol.EXIT_WORDS:
                self._flush(owed)
                return False
            command = COMMANDS.get(request.word)
            if command is None:
                owed.append(protocol.COMMAND_NOT_FOUND)
            elif command.waits:
                owed = self._flush(owed)
                owed.append(self._run_watched(command.run, runtime, request.arg))
            else:
                owed.append(command.run(runtime, request.arg))
        self._flush(owed)
        return True

    def _run_watched(self, run, runtime: Runtime, arg: bytes) -> bytes:
        """Run a command that waits, ending it early if the client resets."""
        watcher = gevent.spawn(self._watch_for_reset, gevent.getcurrent())
        try:
            return run(runtime, arg)
        finally:
            watcher.kill(block=False)

    def _watch_for_reset(self, session: gevent.Greenlet) -> None:
        # Only a reset means the client is gone: EOF is a half-close, and data is
        # the next request. Either way there is nothing more to watch for.
        try:
            self.hub.wait(self.readable)
            self.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            session.kill(ClientGone, block=False)

    def _wait_for_shutdown(self) -> None:
        # The server is closing: run no more commands; it throws ShuttingDown in.
        self.busy = False
        self.server.session_idle()
        Event().wait()

    def _log_request(self, line: bytes) -> None:
        if not self.server.config.quiet:
            log_request(self.host, line, self.system)

    def _flush(self, owed: list[bytes]) -> list[bytes]:
        if owed:
            self._send(b"".join(owed) if len(owed) > 1 else owed[0])
        return []

    def _send(self, data: bytes) -> None:
        # A client gets the whole idle timeout to take a reply, not what was left.
        saved, self.waiting = self.deadline, REPLY
        if self.idle_timeout:
            self.deadline = time.monotonic() + self.idle_timeout
        try:
            # send() first: gevent's sendall() asks the kernel for SO_SNDBUF on
            # every call, one syscall more per reply.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except (OSError, IdleTimeout) as exc:
            raise ClientGone() from exc
        finally:
            self.waiting, self.deadline = None, saved

    def expire(self, greenlet: gevent.Greenlet) -> None:
        """Hub callback from the reaper: end the wait if it is still overdue."""
        if self.waiting and self.deadline and time.monotonic() >= self.deadline:
            greenlet.throw(IdleTimeout)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass


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
        self.sessions: dict[gevent.Greenlet, Session] = {}
        self.accepted = 0
        self.closing = False
        self._idle = Event()
        self._reaper: gevent.Greenlet | None = None

    def start(self) -> None:
        """Listen, and start the idle reaper when there is an idle timeout."""
        super().start()
        if self.config.idle_timeout:
            self._reaper = gevent.spawn(self._reap_idle_sessions)

    def _reap_idle_sessions(self) -> None:
        # One greenlet checks every session a few times per timeout period, instead
        # of a timer per recv; a session is overdue by at most a quarter period.
        interval = min(1.0, self.config.idle_timeout / 4)
        loop = self.loop
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for session_greenlet, session in list(self.sessions.items()):
                if session.waiting and session.deadline and now >= session.deadline:
                    # Checked again when the callback runs, in the hub: by then the
                    # session may have woken up with a request.
                    loop.run_callback(session.expire, session_greenlet)

    def handle(self, sock: socket.socket, address: tuple) -> None:
        """Serve one connection (gevent closes ``sock`` when this returns)."""
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
        session = Session(self, sock, host, number)
        me = gevent.getcurrent()
        self.sessions[me] = session
        reason = RESET
        try:
            reason = session.run()
        finally:
            del self.sessions[me]
            self.session_idle()
        if reason == CLEAN and nothing_unread(sock):
            sock.close()  # a FIN, not a reset: nothing to linger for
        else:
            linger_close(sock)

    def session_idle(self) -> None:
        """A session finished a batch of commands; wake a waiting shutdown."""
        if self.closing and not any(s.busy for s in self.sessions.values()):
            self._idle.set()

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
        for session_greenlet in list(self.sessions):
            session_greenlet.kill(ShuttingDown, block=False)
        gevent.joinall(list(self.sessions), timeout=LINGER_SECONDS + 1)
        # Whatever still hangs (a client that reads nothing) is cut off.
        gevent.killall(list(self.sessions), timeout=1)
        self.runtime.pool.kill()


def nothing_unread(sock: socket.socket) -> bool:
    """True when the client has sent nothing we have not read (one peek, no wait)."""
    # Timeout 0: gevent raises EAGAIN instead of waiting for data.
    sock.settimeout(0.0)
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False


def linger_close(sock: socket.socket) -> None:
    """Hang up politely: send FIN, read and drop what the client still sends.

    Closing with unread input makes the kernel send a reset, and a reset can
    destroy the reply the client has not read yet ("Line too long.", a bye).
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        while dropped < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                break
            dropped += len(chunk)
    except OSError:
        pass
    sock.close()


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
