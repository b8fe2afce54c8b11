"""``/metrics`` for the Twisted twin: prometheus_client's resource on ``twisted.web``.

Compare ``gevent_engine/metrics.py`` and ``asyncio_engine/metrics.py``.
"""

from __future__ import annotations

from prometheus_client.twisted import MetricsResource
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..core.errors import cannot_listen
from ..core.metrics import REQUEST_SECONDS, Metrics
from ..core.settings import format_address

__all__ = ["serve_metrics"]


class _Quiet(Site):
    """A Site that does not write an access log line per scrape."""

    def log(self, request) -> None:
        """No access log."""


def serve_metrics(metrics: Metrics, host: str, port: int):
    """Listen for ``/metrics``; the port (``stopListening()`` ends it). Raises BindError."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    try:
        # Site's own timeout drops a connection idle this long (its default: 12 hours).
        return reactor.listenTCP(port, _Quiet(root, timeout=REQUEST_SECONDS), interface=host)
    except CannotListenError as exc:
        raise cannot_listen(format_address(host, port), exc.socketError) from None
