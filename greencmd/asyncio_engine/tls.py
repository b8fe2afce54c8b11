"""TLS for the asyncio engine: the listener's context, and a handshake bounded in time.

The connection's coroutine upgrades its stream with ``StreamWriter.start_tls``
(Python 3.11+) under ``ssl_handshake_timeout``; a failure is one log line and
no session. Compare ``gevent_engine/tls.py`` and ``twisted_engine/tls.py``.
"""

from __future__ import annotations

import asyncio
import ssl

from ..core.logs import log
from ..core.settings import ServerConfig
from ..core.tls import (
    HANDSHAKE_SECONDS,
    describe_tls_error,
    server_context,
    server_handshake_failure,
)

__all__ = ["tls_context", "tls_handshake"]


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's TLS context, or None."""
    if not config.tls_cert:
        return None
    return server_context(config.tls_cert, config.tls_key, config.tls_client_ca)


async def tls_handshake(context: ssl.SSLContext, writer: asyncio.StreamWriter,
                        system: str) -> bool:
    """True once the client completed its handshake; False (and one log line) if not."""
    # Called before anything else awaits: the client's first bytes must reach TLS,
    # not the stream's buffer (so no wait_for here, which would start a task).
    try:
        await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_SECONDS)
        return True
    except asyncio.CancelledError:
        # Shutdown ends a handshake so, not with transport.abort(): aborted, start_tls()
        # returns no transport, as if the handshake had worked (CPython 3.11 to 3.13).
        # start_tls() closed the connection; the task ends here, not cancelled.
        return False
    except (asyncio.TimeoutError, ConnectionAbortedError):
        why = "no handshake within %g seconds" % HANDSHAKE_SECONDS
    except (ssl.SSLError, OSError) as exc:
        why = server_handshake_failure(describe_tls_error(exc)
                                       or "the client closed the connection")
    log("TLS handshake failed: %s" % why, system, "tls_failed", "warning", reason=why)
    writer.transport.abort()
    return False
