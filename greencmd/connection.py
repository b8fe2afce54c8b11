"""A client connection as the session sees it: request lines in, replies out.

:class:`Connection` wraps one gevent socket. ``read_line()`` blocks (this
greenlet only) until the client has sent a whole line; ``write()`` queues a
reply, and what is queued goes out in one ``send()`` just before the session
would wait for the client again, so a pipelined burst of quick requests is
answered in one write. Both directions are bounded by the idle timeout, kept as
the socket's own timeout: gevent starts a timer only when a call really waits.

Errors: every way the client can fail the session is one exception, raised
where it happens: :class:`LineTooLong`, :class:`IdleTimeout` (no complete line
in time) and :class:`ClientGone` (reset, failed write, or a reply left unread
for the idle timeout; its ``reason`` is the log's).

Resource handling: :meth:`Connection.hang_up` closes the socket; it never raises.
(gevent's StreamServer closes it too once the handler returns, whatever happened.)
"""

from __future__ import annotations

import socket
import time

from . import protocol
from .config import LINGER_BYTES, LINGER_SECONDS, RECV_SIZE
from .logs import IDLE, RESET

__all__ = ["Connection", "LineTooLong", "IdleTimeout", "ClientGone", "linger_close"]


class LineTooLong(Exception):
    """The client sent a line longer than ``--max-line``."""


class IdleTimeout(Exception):
    """The client sent no complete line within ``--idle-timeout``."""


class ClientGone(Exception):
    """The client reset, or left a reply unread; ``reason`` says which for the log."""

    def __init__(self, reason: str = RESET) -> None:
        super().__init__(reason)
        self.reason = reason


class Connection:
    """Lines from a client socket, replies to it; see the module's docstring."""

    __slots__ = ("sock", "idle_timeout", "lines", "buffer", "owed", "eof")

    def __init__(self, sock: socket.socket, max_line: int, idle_timeout: float) -> None:
        self.sock = sock
        self.idle_timeout = idle_timeout or None  # 0 disables it: wait for ever
        self.lines: list[bytes] = []  # complete lines received, not yet read, reversed
        self.buffer = protocol.LineBuffer(max_line)
        self.owed: list[bytes] = []  # replies written, not yet sent
        self.eof = False

    def read_line(self) -> bytes | None:
        """The next request line, without its line end; ``None`` once the client closed.

        Sends the replies owed first if it has to wait. The client then has the
        idle timeout from now to complete a line: bytes that trickle in without a
        line feed do not restart the clock.
        """
        deadline = None
        while not self.lines:
            if self.buffer.too_long:
                raise LineTooLong()
            if self.eof:
                return None
            self.flush()
            if self.idle_timeout and deadline is None:
                deadline = time.monotonic() + self.idle_timeout
            data = self._receive(deadline)
            lines = self.buffer.feed(data) if data else self.buffer.finish()
            self.eof = not data
            lines.reverse()
            self.lines = lines
        return self.lines.pop()

    def _receive(self, deadline: float | None) -> bytes:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdleTimeout()
            self.sock.settimeout(left)
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise IdleTimeout() from None
        except OSError as exc:
            raise ClientGone() from exc

    def write(self, reply: bytes) -> None:
        """Queue ``reply``; it is sent before the session next waits (or on flush)."""
        self.owed.append(reply)

    def flush(self) -> None:
        """Send every reply owed; the client has the idle timeout to take them."""
        if not self.owed:
            return
        data = b"".join(self.owed) if len(self.owed) > 1 else self.owed[0]
        self.owed = []
        self.sock.settimeout(self.idle_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ClientGone(IDLE) from None
        except OSError as exc:
            raise ClientGone() from exc

    def hang_up(self, goodbye: bytes | None, clean: bool = False) -> None:
        """Send what is owed and ``goodbye``, then close; never raises.

        ``goodbye`` None: the client is gone; send nothing, close at once.
        ``clean`` (the client is done and nothing went wrong): close at once if
        it sent nothing more, else linger so the replies survive (:func:`linger_close`).
        """
        if goodbye is None:
            self.sock.close()
            return
        self.write(goodbye)
        try:
            self.flush()
        except ClientGone:
            pass
        if clean and nothing_unread(self.sock):
            self.sock.close()  # a FIN, not a reset: nothing to linger for
        else:
            linger_close(self.sock)


def nothing_unread(sock: socket.socket) -> bool:
    """True when the client has sent nothing we have not read (one peek, no wait)."""
    sock.settimeout(0.0)  # gevent then raises EAGAIN instead of waiting
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False


def linger_close(sock: socket.socket) -> None:
    """Hang up politely: send FIN, read and drop what the client still sends, close.

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
    finally:
        sock.close()
