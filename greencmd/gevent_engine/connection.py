"""A client connection as the session sees it: request lines in, replies out.

:class:`Connection` wraps one gevent socket. ``read_line()`` blocks (this
greenlet only) until the client has sent a whole line; ``write()`` queues a
reply, and what is queued goes out in one ``send()`` just before the session
would wait for the client again, so a pipelined burst of quick requests is
answered in one write.

The idle timeout: while ``read_line()`` waits, ``idle_since`` says since when,
and the server's reaper ends a session that waits too long (a timer per read
would cost a third of the server's CPU per reply). A reply the client leaves
unread is bounded by the socket's own timeout, which costs nothing unless a
send really has to wait.

Errors: every way the client can fail the session is one exception, raised
where it happens: :class:`LineTooLong`, :class:`IdleTimeout` (no complete line
in time, raised by the reaper) and :class:`ClientGone` (reset, failed write, or
a reply left unread for the idle timeout; its ``reason`` is the log's).

Resource handling: gevent's StreamServer closes the socket once the session
returns, whatever happened; :meth:`Connection.hang_up` only lets the client go
politely, and never raises.
"""

from __future__ import annotations

import select
import socket
import time

import gevent
from gevent.ssl import SSLSocket

from ..core import protocol
from ..core.logs import IDLE, RESET
from ..core.settings import LINGER_BYTES, LINGER_SECONDS, RECV_SIZE

__all__ = ["Connection", "LineTooLong", "IdleTimeout", "ClientGone", "OtherProtocol",
           "nothing_pending", "peek", "linger", "close_tls"]


class LineTooLong(Exception):
    """The client sent a line longer than ``--max-line``."""


class IdleTimeout(BaseException):
    """The client sent no complete line within ``--idle-timeout``.

    A ``BaseException``, like everything the server throws into a session: a
    plugin's ``except Exception`` must not swallow it.
    """


class OtherProtocol(Exception):
    """The client speaks another protocol (``name``: HTTP, TLS); end at once, no reply."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ClientGone(BaseException):
    """The client reset, or left a reply unread; ``reason`` says which for the log.

    A ``BaseException``: the reset watcher throws it into a session that may be
    running a plugin, whose ``except Exception`` must let it through.
    """

    def __init__(self, reason: str = RESET) -> None:
        super().__init__(reason)
        self.reason = reason


class Connection:
    """Lines from a client socket, replies to it; see the module's docstring."""

    __slots__ = ("sock", "idle_timeout", "lines", "buffer", "unsent", "eof", "idle_since",
                 "first_read", "sending", "timed")

    def __init__(self, sock: socket.socket, max_line: int, idle_timeout: float) -> None:
        self.sock = sock
        self.idle_timeout = idle_timeout or None  # 0 disables it: wait for ever
        # Both None when empty: thousands of idle sessions need no empty lists.
        self.lines: list[bytes] | None = None  # complete lines not yet read, reversed
        self.buffer = protocol.LineBuffer(max_line)
        self.unsent: list[bytes] | None = None  # replies written, not yet sent
        self.eof = False
        #: When read_line() began to wait for the client's next line; None while
        #: it does not wait (a command runs, or lines are at hand).
        self.idle_since: float | None = None
        self.first_read = True  # nothing received yet: the first bytes are checked
        #: True from the start of a send until it completes: if the session is
        #: killed meanwhile, the client has part of a reply and must get nothing more.
        self.sending = False
        #: True while the socket keeps the timeout a flush gave it (reads undo it).
        self.timed = False

    def read_line(self) -> bytes | None:
        """The next request line, without its line end; ``None`` once the client closed.

        Sends the replies owed first if it has to wait. The idle clock runs from
        then until a line is complete: bytes that trickle in without a line feed
        do not restart it.
        """
        if not self.lines:  # it must wait: replies owed go out, the idle clock runs
            if self.unsent is not None:
                self.flush()
            self.idle_since = time.monotonic()
        line = self.next_line()
        self.idle_since = None  # (after an exception, hang_up clears it)
        return line

    def next_line(self) -> bytes | None:
        """The next line the client sends (``None`` at EOF), without flushing or idle clock.

        ``follow`` waits for its stop line with this, in a greenlet of its own.
        """
        while not self.lines:
            if self.buffer.too_long:
                raise LineTooLong()
            if self.eof:
                return None
            data = self._receive()
            if self.first_read:
                self.first_read = False
                suspect = protocol.other_protocol_start(data)
                if suspect:
                    raise OtherProtocol(suspect)
            self.eof = not data
            lines = self.buffer.feed(data) if data else self.buffer.finish()
            if len(lines) == 1:  # the usual case: one request per read
                return lines[0]
            lines.reverse()
            self.lines = lines
        return self._pop_line()

    def _pop_line(self) -> bytes:
        line = self.lines.pop()
        if not self.lines:
            self.lines = None
        return line

    def _receive(self) -> bytes:
        if self.timed:  # a send's timeout; the reaper keeps the idle timeout
            self.sock.settimeout(None)  # (gevent's gettimeout() would cost as much)
            self.timed = False
        try:
            return self.sock.recv(RECV_SIZE)
        except OSError as exc:
            raise ClientGone() from exc

    def write(self, reply: bytes) -> None:
        """Queue ``reply``; it is sent before the session next waits (or on flush)."""
        if self.unsent is None:
            self.unsent = [reply]
        else:
            self.unsent.append(reply)

    def flush(self) -> None:
        """Send every reply owed; the client has the idle timeout to take them."""
        if self.unsent is None:
            return
        data = b"".join(self.unsent) if len(self.unsent) > 1 else self.unsent[0]
        self.unsent = None
        self.sock.settimeout(self.idle_timeout)
        self.timed = True
        self._send(data)

    def send_while_reading(self, data: bytes) -> None:
        """Send ``data`` now, while another greenlet waits in :meth:`next_line`.

        The socket's timeout belongs to that reader, so the idle timeout of this
        send is a ``gevent.Timeout``: the client has that long to take it.
        """
        with gevent.Timeout(self.idle_timeout, TimeoutError):
            self._send(data)

    def _send(self, data: bytes) -> None:
        self.sending = True
        try:
            # send() first: gevent's sendall() asks the kernel for SO_SNDBUF on
            # every call, one syscall more per reply.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
            self.sending = False
        except TimeoutError:
            raise ClientGone(IDLE) from None
        except OSError as exc:
            raise ClientGone() from exc

    def hang_up(self, goodbye: bytes | None) -> None:
        """Send what is owed and ``goodbye``, and let the client go; never raises.

        ``goodbye`` None: the client is gone; send nothing. b"": a clean end (exit
        or EOF); if nothing the client sent is left unread here, the close can
        come at once (the rule of the other engines, which look at what they
        have read, too). Otherwise, or after a last line, linger so the replies
        survive (:func:`linger`). StreamServer closes the socket when the handler
        returns.
        """
        self.idle_since = None  # no longer waiting for a request: not the reaper's
        if goodbye is None or self.sending:  # gone, or a reply was cut: say nothing more
            return
        if goodbye:
            self.write(goodbye)
        if self.unsent is not None:
            self.idle_timeout = LINGER_SECONDS  # a client that reads nothing is not waited for
            try:
                self.flush()
            except ClientGone:
                return
        if isinstance(self.sock, SSLSocket):
            close_tls(self.sock)
        elif goodbye or self.lines or self.buffer.pending:
            linger(self.sock)


def nothing_pending(sock: socket.socket) -> bool:
    """True when no byte, EOF or reset from the client waits to be seen; never waits.

    A poll() that does not wait asks the kernel; a TLS socket may also hold
    bytes already decrypted. (A non-blocking ``recv`` that finds nothing costs
    five times as much: gevent raises and catches EAGAIN, and its timeout must
    be set and restored around it; docs/performance.md.)
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if poller.poll(0):
        return False
    return not (isinstance(sock, SSLSocket) and sock.pending())


def peek(sock: socket.socket) -> bytes | None:
    """The next byte the client sent, b"" at EOF, None if nothing is there; OSError on reset.

    Never waits, and reads nothing, so it is safe while another greenlet waits
    on ``sock``. A TLS socket cannot peek (decrypting consumes), so its
    descriptor is peeked as the plain TCP socket it is: any byte there is the
    client sending something.
    """
    if nothing_pending(sock):
        return None
    if isinstance(sock, SSLSocket):
        if sock.pending():
            return b"?"  # decrypted and waiting to be read
        plain = socket.socket(fileno=sock.fileno())  # the same descriptor, not a copy
        try:
            return plain.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            plain.detach()
    return sock.recv(1, socket.MSG_PEEK)  # at once: the poll saw something there


def close_tls(sock: socket.socket) -> None:
    """End a TLS stream as TLS means it: send close_notify, wait a while for the client's.

    Without it, a TLS client sees "unexpected eof" after a normal ``exit``.
    """
    try:
        sock.settimeout(LINGER_SECONDS)
        sock.unwrap()
    except (OSError, ValueError):
        pass  # the client is gone, or did not answer in time: close anyway


def linger(sock: socket.socket) -> None:
    """Before a close: send FIN, then read and drop what the client still sends, a while.

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
