"""The greencmd client: one request from the command line, or netcat-like from stdin.

Plain blocking sockets and ``selectors``: a client has one connection, so it
needs no event loop. Exit codes: 0 for normal replies, 1 when any reply is an
error reply, 3 when it cannot connect, a reply does not come in time, or the
server closes without replying to a request.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import threading
from typing import BinaryIO, NamedTuple

from ..core import protocol
from ..core.errors import describe_os_error, duration
from ..core.tls import NO_REPLY, TLS_RESET, client_tls_failure, is_tls, no_reply

__all__ = ["Endpoint", "ClientError", "OK", "FAILED", "UNREACHABLE", "request", "interact",
           "follow", "is_follow"]

OK, FAILED, UNREACHABLE = 0, 1, 3
#: Most read from the server at once.
RECV_SIZE = 65536


#: What a client says of a server that closed in the middle of a reply.
CUT_SHORT = "closed the connection in the middle of a reply"


class ClientError(Exception):
    """Connecting or reading failed; the message is one sentence for the user."""


class Endpoint(NamedTuple):
    """Where the server is: a host and port, or a Unix socket."""

    host: str
    port: int
    unix: str | None = None
    tls: ssl.SSLContext | None = None

    @property
    def where(self) -> str:
        """How messages name it."""
        return "unix:" + self.unix if self.unix else "%s:%d" % (self.host, self.port)


def connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected socket with ``timeout`` on every read. Raises ClientError."""
    where = endpoint.where
    try:
        if endpoint.unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(endpoint.unix)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        if endpoint.tls is not None:
            sock = tls_connect(sock, endpoint.tls, endpoint.host, where)
    except TimeoutError:
        raise ClientError("cannot connect to %s: no answer within %s"
                          % (where, duration(timeout))) from None
    except OSError as exc:
        raise ClientError("cannot connect to %s: %s" % (where, describe_os_error(exc))) \
            from None
    return sock


class Refused(Exception):
    """The server refused our token; the message is its line ("" if it said nothing)."""


def authenticate(sock: socket.socket, token: bytes) -> None:
    """Send ``auth TOKEN`` and read the reply line; raises Refused unless authenticated.

    Raises OSError (TimeoutError included) when the connection fails. Plain code
    for any socket: the fleet calls it on gevent's.
    """
    sock.sendall(b"auth " + token + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        data = sock.recv(256)
        if not data:
            break
        reply += data
    if reply != protocol.AUTHENTICATED:
        raise Refused(reply.decode("utf-8", "replace").strip())


def open_session(endpoint: Endpoint, timeout: float, token: bytes | None) -> socket.socket:
    """A connected socket, authenticated first when there is a token.

    Raises ClientError, or Refused with the server's line when the token is refused.
    """
    sock = connect(endpoint, timeout)
    if token is None:
        return sock
    where = endpoint.where
    try:
        authenticate(sock, token)
    except Refused as refused:
        sock.close()
        if not str(refused):
            raise ClientError("%s %s" % (where, no_reply(is_tls(sock)))) from None
        raise Refused("%s: %s" % (where, refused)) from None
    except OSError as exc:
        sock.close()
        raise _lost(exc, where, timeout, is_tls(sock)) from None  # before any reply
    return sock


def tls_connect(sock: socket.socket, context: ssl.SSLContext, host: str,
                where: str) -> ssl.SSLSocket:
    """``sock`` after a verified TLS handshake; raises ClientError in one sentence."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ClientError("TLS handshake with %s failed: %s" % (where, client_tls_failure(exc))) \
            from None


def request(endpoint: Endpoint, timeout: float, line: bytes, out: BinaryIO,
            token: bytes | None = None) -> int:
    """Send one request line, copy the whole reply to ``out``; return the exit code."""
    where = endpoint.where
    with open_session(endpoint, timeout, token) as sock:
        try:
            sock.sendall(line + b"\n")
            no_more_requests(sock)  # the server answers, then closes
        except OSError as exc:
            raise _lost(exc, where, timeout, endpoint.tls) from None
        replies = _copy_replies(sock, out, timeout, where)
    return _status(replies, expects_reply(line), where, no_reply(endpoint.tls))


def is_follow(line: bytes) -> bool:
    """True for a ``follow [N]`` request, which streams until it is stopped."""
    request = protocol.parse_request(line)
    return request is not None and request.word == b"follow"


def follow(endpoint: Endpoint, timeout: float, line: bytes, out: BinaryIO,
           token: bytes | None = None) -> int:
    """``follow [N]``: print lines as they come until Ctrl-C (or SIGTERM), which stops it cleanly.

    No reply timeout while following (a log may be quiet for hours), and no
    half-close after the request (EOF would stop the follow). Ctrl-C sends the
    stop line and prints the rest, ``End follow`` included, within ``timeout``.
    """
    where, why = endpoint.where, no_reply(endpoint.tls)
    replies = protocol.ReplyScanner()
    signal.signal(signal.SIGTERM, _interrupt)  # kill stops it as cleanly as Ctrl-C
    with open_session(endpoint, timeout, token) as sock:
        try:
            _send_or_close(sock, line + b"\n", where, received=False)
            sock.settimeout(None)
            while data := _recv(sock, None, where):
                replies.feed(data)
                out.write(data)
                out.flush()
                if replies.failed:  # no follow began (no log, a bad N): nothing to wait for
                    sock.settimeout(timeout)
                    _send_or_close(sock, b"", where)
                    _copy_replies(sock, out, timeout, where, replies)
                    break
            return _status(replies, True, where, why)  # the server ended it (shutdown, an error)
        except KeyboardInterrupt:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second one: no traceback
                signal.signal(signum, signal.SIG_IGN)
        sock.settimeout(timeout)
        _send_or_close(sock, b"\n", where)  # the stop line
        _send_or_close(sock, b"", where)  # then no more requests: the server closes
        _copy_replies(sock, out, timeout, where, replies)
    return _status(replies, True, where, why)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def interact(endpoint: Endpoint, timeout: float, stdin_fd: int, out: BinaryIO,
             token: bytes | None = None) -> int:
    """Netcat-like: send stdin as it comes, print replies as they come.

    Ends when the server closes; at EOF on stdin the sending side is closed and
    the remaining replies are awaited, ``timeout`` seconds each. Any error reply
    makes the exit status 1; a server that closes first without a word, 3.
    """
    where = endpoint.where
    why = no_reply(endpoint.tls)
    with open_session(endpoint, timeout, token) as sock, \
            selectors.DefaultSelector() as sel:
        try:
            sel.register(stdin_fd, selectors.EVENT_READ)
        except PermissionError:  # a regular file or /dev/null: epoll cannot watch it
            return _send_file(sock, stdin_fd, out, timeout, endpoint)
        sock.settimeout(None)
        sel.register(sock, selectors.EVENT_READ)
        replies, asked = protocol.ReplyScanner(), False
        while True:
            for key, _ in sel.select():
                if key.fd == stdin_fd:
                    data = os.read(stdin_fd, RECV_SIZE)
                    asked = asked or expects_reply(data)
                    _send_or_close(sock, data, where, replies.received)
                    if not data:
                        sel.unregister(stdin_fd)
                        sock.settimeout(timeout)
                        _copy_replies(sock, out, timeout, where, replies)
                        return _status(replies, asked, where, why)
                    continue
                data = _recv(sock, timeout, where, replies.received)
                if not data:  # the server closed first: without a word, that is a failure
                    return _status(replies, asked or not replies.received, where, why)
                replies.feed(data)
                out.write(data)
                out.flush()


def _send_file(sock: socket.socket, fd: int, out: BinaryIO, timeout: float,
               endpoint: Endpoint) -> int:
    """Send a file's lines from a thread while this one prints the replies."""
    where = endpoint.where
    asked, failure = [False], []

    def pump() -> None:
        try:
            while data := os.read(fd, RECV_SIZE):
                asked[0] = asked[0] or expects_reply(data)
                sock.sendall(data)
            no_more_requests(sock)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    replies = _copy_replies(sock, out, timeout, where)
    sender.join()
    if failure and isinstance(failure[0], TimeoutError):
        raise ClientError("%s took no more requests for %s" % (where, duration(timeout)))
    if failure and not replies.received:
        raise _lost(failure[0], where, timeout, endpoint.tls)
    return _status(replies, asked[0], where, no_reply(endpoint.tls))


def expects_reply(data: bytes) -> bool:
    """True when ``data`` holds a request that gets a reply (not blank, not exit/quit)."""
    for line in data.split(b"\n"):
        request = protocol.parse_request(line)
        if request is not None and request.word not in protocol.EXIT_WORDS:
            return True
    return False


def _status(replies: protocol.ReplyScanner, asked: bool, where: str,
            why: str = NO_REPLY) -> int:
    """The exit status once the server closed; no reply to a request is a failure (3),
    said with ``why`` (:func:`no_reply`'s sentence, which names the likely cause), and
    so is a reply it cut short (what came of it is printed: it must not pass for whole)."""
    if asked and not replies.received:
        raise ClientError("%s %s" % (where, why))
    if replies.cut:
        raise ClientError("%s %s" % (where, CUT_SHORT))
    return FAILED if replies.failed else OK


def no_more_requests(sock: socket.socket) -> None:
    """Tell the server no request follows: half-close, or over TLS (which cannot) ``exit``."""
    if is_tls(sock):
        sock.sendall(b"exit\n")
    else:
        sock.shutdown(socket.SHUT_WR)


def _send_or_close(sock: socket.socket, data: bytes, where: str,
                   received: bool = True) -> None:
    try:
        if data:
            sock.sendall(data)
        else:
            no_more_requests(sock)
    except OSError as exc:
        raise _lost(exc, where, None, not received and is_tls(sock)) from None


def _copy_replies(sock: socket.socket, out: BinaryIO, timeout: float, where: str,
                  replies: protocol.ReplyScanner | None = None) -> protocol.ReplyScanner:
    """Copy everything until the server closes, scanning it for error replies."""
    replies = replies or protocol.ReplyScanner()
    while True:
        data = _recv(sock, timeout, where, replies.received)
        if not data:
            return replies
        replies.feed(data)
        out.write(data)
        out.flush()


def _recv(sock: socket.socket, timeout: float | None, where: str,
          received: bool = True) -> bytes:
    try:
        return sock.recv(RECV_SIZE)
    except OSError as exc:
        raise _lost(exc, where, timeout, not received and is_tls(sock)) from None


def _lost(exc: OSError, where: str, timeout: float | None,
          tls_before_reply: bool = False) -> ClientError:
    """A failed read or write as the one sentence the user sees.

    ``tls_before_reply``: over TLS, after the handshake, before any reply.
    """
    if isinstance(exc, ssl.SSLEOFError):  # a close or reset, as OpenSSL sees it: not TLS's fault
        if tls_before_reply:
            return ClientError("%s %s" % (where, no_reply(True)))
        return ClientError("connection to %s lost: the server closed it" % where)
    if isinstance(exc, ssl.SSLError):  # TLS 1.3 reports a refused certificate only now
        return ClientError("TLS with %s failed: %s" % (where, client_tls_failure(exc)))
    if tls_before_reply and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return ClientError("%s %s" % (where, TLS_RESET))
    if isinstance(exc, TimeoutError) and timeout is not None:
        return ClientError("no reply from %s within %s" % (where, duration(timeout)))
    return ClientError("connection to %s lost: %s" % (where, describe_os_error(exc)))
