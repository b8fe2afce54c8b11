"""TLS for the gevent engine: the listener's context, and a handshake bounded in time.

The session's own greenlet does the handshake, under a ``gevent.Timeout``; a
failure is one log line and no session. Compare ``twisted_engine/tls.py``.
"""

from __future__ import annotations

import socket
import ssl

import gevent
import gevent.ssl

from ..core.logs import log
from ..core.settings import ServerConfig
from ..core.tls import (
    HANDSHAKE_SECONDS,
    describe_tls_error,
    server_context,
    server_handshake_failure,
)

__all__ = ["tls_context", "tls_handshake"]


class HandshakeTimeout(Exception):
    """The client did not complete its TLS handshake in time."""


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (gevent's, so handshakes wait cooperatively), or None."""
    if not config.tls_cert:
        return None
    return server_context(config.tls_cert, config.tls_key, config.tls_client_ca,
                          gevent.ssl.SSLContext)


def tls_handshake(context: ssl.SSLContext, sock: socket.socket,
                  system: str) -> ssl.SSLSocket | None:
    """The TLS socket once the client completed its handshake; None (and one log line) if not."""
    try:
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (ssl.SSLError, OSError):
        # gevent checks the peer here: a client that sent bytes, then reset, before
        # its connection was accepted (asyncio's words for it).
        return _failed("connection reset by peer", system)
    try:
        with gevent.Timeout(HANDSHAKE_SECONDS, HandshakeTimeout):
            tls_sock.do_handshake()
        return tls_sock
    except HandshakeTimeout:
        why = "no handshake within %g seconds" % HANDSHAKE_SECONDS
    except (ssl.SSLError, OSError) as exc:
        why = server_handshake_failure(describe_tls_error(exc)
                                       or "the client closed the connection")
    tls_sock.close()
    return _failed(why, system)


def _failed(why: str, system: str) -> None:
    log("TLS handshake failed: %s" % why, system, "tls_failed", "warning", reason=why)
