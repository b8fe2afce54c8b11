"""One client session: read a line, run the command, write the reply.

:meth:`Session.serve` reads top to bottom like blocking code. The one twist is
what happens when the client has nothing more to say: instead of a greenlet
waiting in ``recv()`` (about 9 KiB each while idle, the price of any gevent
StreamServer handler here), the session *parks* on its socket's io watcher and
its greenlet ends; the watcher starts a new greenlet when bytes arrive. An idle
session is then a few small objects, and thousands cost little.

Errors: a client can only end its own session. Resource handling: whatever way
a session ends, :meth:`Session._end` closes its watcher and socket exactly once.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from greenlet import getcurrent, greenlet

from . import protocol
from .commands import COMMANDS, Runtime
from .config import LINGER_BYTES, LINGER_SECONDS, RECV_SIZE
from .logs import (
    CLEAN,
    IDLE,
    RESET,
    SHUTDOWN,
    TOO_LONG,
    log,
    log_lost,
    log_request,
    session_system,
)

if TYPE_CHECKING:
    from .server import CommandServer

__all__ = ["Session", "ClientGone", "ShuttingDown", "IdleTimeout", "linger_close"]


class ClientGone(Exception):
    """The client reset the connection, or a reply could not be written."""


class ShuttingDown(Exception):
    """Thrown into a session's greenlet when the server closes it at shutdown."""


class IdleTimeout(Exception):
    """Thrown into a session stuck writing a reply the client does not take."""


class Session:
    """One client connection, from accept to close."""

    # Slots: thousands of idle sessions each save a __dict__.
    __slots__ = ("server", "sock", "host", "system", "lines", "hub", "readable", "greenlet",
                 "turn", "busy", "ended", "more_queued", "deadline", "writing")

    def __init__(self, server: CommandServer, sock: socket.socket, host: str,
                 number: int) -> None:
        self.server = server
        self.sock = sock
        self.host = host
        self.system = session_system(number, host)
        self.lines = protocol.LineBuffer(server.config.max_line)
        self.hub = gevent.get_hub()
        self.readable = self.hub.loop.io(sock.fileno(), 1)
        self.greenlet: greenlet | None = None  # None while parked
        # Counts each time a greenlet takes the session up: an interrupt meant for
        # one turn must not hit the next (runner greenlets are reused).
        self.turn = 0
        self.busy = False
        self.ended = False
        # After a read that filled the buffer, more is likely queued: read again
        # rather than park.
        self.more_queued = False
        # Read by the server's reaper: by when this session must have sent a
        # complete line (parked) or taken its reply (writing).
        self.deadline = 0.0
        self.writing = False

    # -- the session loop ------------------------------------------------------

    def serve(self) -> None:
        """Answer what the client sent; park when it has nothing more; end when done.

        Runs on the greenlet that took the session up (:meth:`take_up`).
        """
        try:
            reason = self._serve()
        except ClientGone:
            reason = RESET
        except ShuttingDown:
            reason = SHUTDOWN
            self._send_quietly(protocol.SHUTTING_DOWN)
        finally:
            self.busy = False
        if reason is None:
            self.park()
        else:
            self._end(reason)

    def _serve(self) -> str | None:
        """The loop: the reason the session ended, or None to park."""
        while True:
            data = self._receive()
            if not self._answer(self.lines.feed(data) if data else self.lines.finish()):
                return CLEAN
            if self.lines.too_long:
                self._send(protocol.LINE_TOO_LONG)
                return TOO_LONG
            if not data:
                return CLEAN
            if not self.more_queued:
                return None

    def _receive(self) -> bytes:
        """The bytes the client sent (it is readable: that is why we run); b"" at EOF."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            raise ClientGone() from exc
        self.more_queued = len(data) == RECV_SIZE
        return data

    def _answer(self, lines: list[bytes]) -> bool:
        """Answer ``lines`` in order; False once the client said ``exit``."""
        if not lines:
            return True
        self.busy = True
        try:
            more = self._run_lines(lines)
        finally:
            self.busy = False
            self.server.session_idle()
        self.restart_idle_clock()
        return more

    def _run_lines(self, lines: list[bytes]) -> bool:
        """Replies of quick commands go out in one write; before a command that
        waits, what is owed so far goes out first."""
        runtime, owed = self.server.runtime, []
        for line in lines:
            if self.server.closing:
                self._flush(owed)
                self._wait_for_shutdown()
            request = protocol.parse_request(line)
            if request is None:
                continue
            if not self.server.config.quiet:
                log_request(self.host, line, self.system)
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

    # -- parking ------------------------------------------------------------------

    def park(self) -> None:
        """Wait for the client with no greenlet: the watcher wakes us up."""
        self.greenlet = None
        self.readable.start(self._wake)

    def _wake(self) -> None:
        # In the hub: bytes (or EOF, or a reset) arrived for a parked session.
        self.readable.stop()
        self.server.runners.run(self)

    def serve_safely(self) -> None:
        """:meth:`serve`, never raising: it runs in a runner greenlet under the hub."""
        try:
            self.serve()
        except BaseException as exc:  # noqa: BLE001 (it would be raised in the hub)
            log("Session failed: %r" % (exc,), self.system)
            if not self.ended:
                self._end(RESET)

    def interrupt(self, exc: type[BaseException], turn: int | None = None) -> None:
        """Raise ``exc`` in the session's greenlet, from the hub, as gevent's kill does.

        Only if the session is still in ``turn`` (default: the current one) when
        the hub gets to it; a session that moved on is left alone.
        """
        if self.greenlet is not None:
            self.hub.loop.run_callback(self._throw, self.turn if turn is None else turn, exc)

    def _throw(self, turn: int, exc: type[BaseException]) -> None:
        target = self.greenlet
        if turn == self.turn and target is not None and not target.dead:
            target.throw(exc)

    def take_up(self, runner: greenlet) -> None:
        """``runner`` serves the session from now on: a new turn."""
        self.greenlet = runner
        self.turn += 1

    def unpark(self) -> bool:
        """Take a parked session out of its wait (for the reaper, for shutdown)."""
        if self.greenlet is not None or self.ended:
            return False
        self.readable.stop()
        self.take_up(gevent.getcurrent())
        return True

    def time_out(self) -> None:
        """In a new greenlet, from the reaper: say so and close, unless it woke up."""
        if self.unpark() and time.monotonic() >= self.deadline:
            try:
                self._send(protocol.IDLE_TIMEOUT)
                self._end(IDLE)
            except ClientGone:
                self._end(RESET)
        elif self.greenlet is gevent.getcurrent():
            self.park()

    def say_goodbye(self) -> None:
        """In a new greenlet, at shutdown: the bye for a parked session."""
        if self.unpark():
            self._send_quietly(protocol.SHUTTING_DOWN)
            self._end(SHUTDOWN)

    def restart_idle_clock(self) -> None:
        """The client has ``--idle-timeout`` seconds from now for its next line."""
        idle = self.server.config.idle_timeout
        if idle:
            self.deadline = time.monotonic() + idle

    # -- commands that wait --------------------------------------------------------

    def _run_watched(self, run, runtime: Runtime, arg: bytes) -> bytes:
        """Run a command that waits, ending it early if the client resets.

        The watch is a bare io watcher, closed before this returns: one left
        registered after the socket is closed would, once the fd number is reused
        by a new client, unregister that client's fd from epoll.
        """
        watch = self.hub.loop.io(self.sock.fileno(), 1)
        watch.start(self._check_reset, watch, self.turn)
        try:
            return run(runtime, arg)
        finally:
            watch.close()

    def _check_reset(self, watch, turn: int) -> None:
        # In the hub: the client sent more, closed its side, or reset. Only a reset
        # means it is gone; after data or EOF there is nothing more to watch for.
        watch.stop()
        self.sock.settimeout(0.0)  # peek without waiting: this is the hub
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            watch.start(self._check_reset, watch, turn)
        except OSError:
            self.interrupt(ClientGone, turn)
        finally:
            self.sock.settimeout(None)

    def _wait_for_shutdown(self) -> None:
        # The server is closing: run no more commands; it throws ShuttingDown in.
        self.busy = False
        self.server.session_idle()
        Event().wait()

    # -- writing --------------------------------------------------------------------

    def _flush(self, owed: list[bytes]) -> list[bytes]:
        if owed:
            self._send(b"".join(owed) if len(owed) > 1 else owed[0])
        return []

    def _send(self, data: bytes) -> None:
        # A client gets the whole idle timeout to take a reply.
        saved, self.writing = self.deadline, True
        self.restart_idle_clock()
        try:
            # send() first: gevent's sendall() asks the kernel for SO_SNDBUF on
            # every call, one syscall more per reply.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except (OSError, IdleTimeout) as exc:
            raise ClientGone() from exc
        finally:
            self.writing, self.deadline = False, saved

    def expire(self) -> None:
        """Hub callback from the reaper: give up on a reply nobody takes."""
        if self.writing and self.greenlet is not None and time.monotonic() >= self.deadline:
            self.greenlet.throw(IdleTimeout)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    # -- the end ------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        """Log why the session ended, release its slot, close its socket."""
        self.ended = True
        self.readable.close()
        log_lost(reason, self.system)
        self.server.forget(self)
        if reason == CLEAN and nothing_unread(self.sock):
            self.sock.close()  # a FIN, not a reset: nothing to linger for
        else:
            linger_close(self.sock)


class Runners:
    """Greenlets that serve woken sessions, reused rather than made per request.

    A new greenlet per wake-up would cost a fresh Python data stack each time
    (allocated and freed around every request); a runner that finished a batch
    waits in ``idle`` for the next session instead. There are only as many as
    sessions were ever active at once, and idle sessions hold none.
    """

    def __init__(self) -> None:
        self.hub = gevent.get_hub()
        self.idle: list[greenlet] = []

    def run(self, session: Session) -> None:
        """In the hub: serve ``session`` on an idle runner (or a new one) now."""
        runner = self.idle.pop() if self.idle else greenlet(self._loop, self.hub)
        session.take_up(runner)
        runner.switch(session)

    def _loop(self, session: Session | None) -> None:
        while session is not None:
            session.serve_safely()
            self.idle.append(getcurrent())
            session = self._next()

    def _next(self) -> Session | None:
        # Back to the hub until run() hands over the next session (None: stop).
        while True:
            try:
                return self.hub.switch()
            except BaseException:  # noqa: BLE001 (an interrupt that came too late)
                continue

    def stop(self) -> None:
        """End the idle runners (at shutdown)."""
        while self.idle:
            self.hub.loop.run_callback(self.idle.pop().switch, None)


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
