"""``/metrics`` for the gevent engine: prometheus_client's WSGI app on ``gevent.pywsgi``.

Compare ``twisted_engine/metrics.py`` (``twisted.web``) and ``asyncio_engine/metrics.py``.
"""

from __future__ import annotations

from gevent.pywsgi import WSGIHandler, WSGIServer
from prometheus_client import make_wsgi_app

from ..core.errors import cannot_listen
from ..core.metrics import REQUEST_SECONDS, Metrics
from ..core.settings import format_address

__all__ = ["serve_metrics"]


class TimedHandler(WSGIHandler):
    """pywsgi's handler with a deadline on each read and write: pywsgi has none, and
    waits for ever for a request that never completes."""

    def handle(self) -> None:
        """Handle the connection's requests, each wait bounded by REQUEST_SECONDS."""
        self.socket.settimeout(REQUEST_SECONDS)
        super().handle()


def serve_metrics(metrics: Metrics, host: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` in greenlets of its own; raises BindError. ``stop()`` ends it."""
    server = WSGIServer((host, port), make_wsgi_app(metrics.registry), log=None,
                        error_log=None, handler_class=TimedHandler)
    try:
        server.start()
    except OSError as exc:
        raise cannot_listen(format_address(host, port), exc) from None
    return server
