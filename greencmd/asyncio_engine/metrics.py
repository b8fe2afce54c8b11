"""``/metrics`` for the asyncio engine: a small HTTP/1.1 responder on ``asyncio.start_server``.

The standard library has no asynchronous HTTP server; a scrape is one GET, so one
request per connection, answered and closed, is all it takes. Compare
``gevent_engine/metrics.py`` and ``twisted_engine/metrics.py``.
"""

from __future__ import annotations

import asyncio

from ..core.errors import cannot_listen
from ..core.metrics import CONTENT_TYPE, REQUEST_SECONDS, Metrics
from ..core.settings import format_address

__all__ = ["serve_metrics"]


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Serve ``/metrics``; the server (``close()`` ends it). Raises BindError."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_SECONDS)
            words = head.split(b"\r\n", 1)[0].split()
            found = words[:2] == [b"GET", b"/metrics"]
            body = metrics.page() if found else b"Not found: try /metrics\n"
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (
                             b"200 OK" if found else b"404 Not Found",
                             CONTENT_TYPE.encode(), len(body)) + body)
            await writer.drain()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(answer, host, port, reuse_address=True)
    except OSError as exc:
        raise cannot_listen(format_address(host, port), exc) from None
