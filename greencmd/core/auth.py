"""``auth TOKEN`` for both engines: the token file, the comparison, and who must have one.

The token is the first line of ``--auth-token-file`` (line end and surrounding
spaces removed), at least 16 characters, in a file only its owner can read. It
is compared in constant time (``hmac.compare_digest``) and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import stat

from . import protocol
from .logs import AUTH_FAILED as FAILED
from .logs import AUTH_REQUIRED as REQUIRED
from .logs import log

__all__ = ["TOKEN_MIN", "NotAuthenticated", "FAILED", "REQUIRED", "read_token_file",
           "reread_token_file", "token_matches", "is_loopback", "reply_to"]

TOKEN_MIN = 16


class NotAuthenticated(Exception):
    """The session must end: ``reason`` for the log, ``goodbye`` for the client."""

    def __init__(self, reason: str, goodbye: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.goodbye = goodbye




def read_token_file(path: str) -> bytes:
    """The token in ``path``; raises ValueError with one sentence saying what to fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError("cannot read the token file %s: %s" % (path, exc.strerror)) from None
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError("the token file %s is not a regular file" % path)
        if mode & 0o077:
            raise ValueError("the token file %s can be read or written by others (mode %o); "
                             "make it private: chmod 600 %s" % (path, mode & 0o777, path))
        first = f.readline(1 << 16)
    token = first.rstrip(b"\r\n").strip()
    if len(token) < TOKEN_MIN:
        raise ValueError("the token in %s is shorter than %d characters; put a longer one "
                         "on its first line (e.g. from: openssl rand -hex 32)"
                         % (path, TOKEN_MIN))
    return token


def reread_token_file(path: str, current: bytes) -> bytes:
    """The token in ``path`` read again (on SIGHUP: a new token), or ``current`` if the
    file does not hold a good one; one log line either way, never the token."""
    try:
        token = read_token_file(path)
    except ValueError as exc:
        log("Cannot reload the auth token: %s; the token read before is still the one"
            % exc, event="token_reload_failed", level="error")
        return current
    log("Auth token reloaded from %s" % path, event="token_reloaded")
    return token


def token_matches(expected: bytes, given: bytes) -> bool:
    """True when ``given`` is the token; takes as long whatever ``given`` is."""
    return hmac.compare_digest(expected, given)


def reply_to(request: protocol.Request, token: bytes | None) -> bytes:
    """The reply to ``auth`` (or to any request before it); raises NotAuthenticated.

    Called for every ``auth`` request, and for any other request of a session that
    has not authenticated yet (only when the server has a token).
    """
    if request.word != b"auth":
        raise NotAuthenticated(REQUIRED, protocol.AUTH_REQUIRED)
    if token is None:
        return protocol.error("this server does not use authentication")
    if not token_matches(token, request.arg):
        raise NotAuthenticated(FAILED, protocol.AUTH_FAILED)
    return protocol.AUTHENTICATED


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only ever means this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in found)
