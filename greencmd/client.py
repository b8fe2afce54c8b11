"""The greencmd client: one request from the command line, or netcat-like from stdin.

Plain blocking sockets and ``selectors``: a client has one connection, so it
needs no event loop. Exit codes are cli.md's: 0 for a normal reply, 1 for an
error reply, 3 when it cannot connect or a reply does not come in time.
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import BinaryIO

from . import protocol
from .errors import describe_os_error

__all__ = ["ClientError", "OK", "FAILED", "UNREACHABLE", "request", "interact"]

OK, FAILED, UNREACHABLE = 0, 1, 3
#: Replies that mean the request was not served, beside protocol.ERROR_REPLIES.
NOT_SERVED = (protocol.SHUTTING_DOWN, protocol.IDLE_TIMEOUT)
RECV_SIZE = 65536


class ClientError(Exception):
    """Connecting or reading failed; the message is one sentence for the user."""


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket with ``timeout`` on every read. Raises ClientError."""
    where = "%s:%d" % (host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise ClientError("cannot connect to %s: no answer within %g seconds"
                          % (where, timeout)) from None
    except OSError as exc:
        raise ClientError("cannot connect to %s: %s" % (where, describe_os_error(exc))) \
            from None
    return sock


def request(host: str, port: int, timeout: float, line: bytes, out: BinaryIO) -> int:
    """Send one request line, copy the whole reply to ``out``; return the exit code."""
    with connect(host, port, timeout) as sock:
        try:
            sock.sendall(line + b"\n")
            # "No more requests": the server answers, then closes.
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise ClientError("connection to %s:%d lost: %s"
                              % (host, port, describe_os_error(exc))) from None
        first = _copy_replies(sock, out, timeout, "%s:%d" % (host, port))
    return FAILED if _failed(first) else OK


def interact(host: str, port: int, timeout: float, stdin_fd: int, out: BinaryIO) -> int:
    """Netcat-like: send stdin as it comes, print replies as they come.

    Ends when the server closes; at EOF on stdin the sending side is closed and
    the remaining replies are awaited, ``timeout`` seconds each.
    """
    where = "%s:%d" % (host, port)
    with connect(host, port, timeout) as sock, selectors.DefaultSelector() as sel:
        sock.settimeout(None)
        sel.register(sock, selectors.EVENT_READ)
        sel.register(stdin_fd, selectors.EVENT_READ)
        first = b""
        while True:
            for key, _ in sel.select():
                if key.fd == stdin_fd:
                    data = os.read(stdin_fd, RECV_SIZE)
                    _send_or_close(sock, data, where)
                    if not data:
                        sel.unregister(stdin_fd)
                        sock.settimeout(timeout)
                        rest = _copy_replies(sock, out, timeout, where)
                        return FAILED if _failed(first or rest) else OK
                    continue
                data = _recv(sock, timeout, where)
                if not data:
                    return FAILED if _failed(first) else OK
                first = first or data
                out.write(data)
                out.flush()


def _send_or_close(sock: socket.socket, data: bytes, where: str) -> None:
    try:
        if data:
            sock.sendall(data)
        else:
            sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        raise ClientError("connection to %s lost: %s" % (where, describe_os_error(exc))) \
            from None


def _copy_replies(sock: socket.socket, out: BinaryIO, timeout: float, where: str) -> bytes:
    """Copy everything until the server closes; return the reply's first bytes."""
    first = b""
    while True:
        data = _recv(sock, timeout, where)
        if not data:
            return first
        if len(first) < RECV_SIZE:
            first += data
        out.write(data)
        out.flush()


def _recv(sock: socket.socket, timeout: float, where: str) -> bytes:
    try:
        return sock.recv(RECV_SIZE)
    except TimeoutError:
        raise ClientError("no reply from %s within %g seconds" % (where, timeout)) from None
    except OSError as exc:
        raise ClientError("connection to %s lost: %s" % (where, describe_os_error(exc))) \
            from None


def _failed(reply: bytes) -> bool:
    return protocol.is_error_reply(reply) or reply.startswith(NOT_SERVED)
