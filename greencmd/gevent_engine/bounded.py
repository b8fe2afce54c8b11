"""A StreamServer that stops accepting while it handles as many connections as it may.

``StreamServer(listener, handle, spawn=Pool(limit))`` is gevent's own way to
bound the greenlets a server runs: when the pool is full, the server stops
accepting and a flood of connections waits in the kernel's listen queue. The
pool pays for it on every connection: a semaphore, a link on each greenlet and
two callbacks through the hub when it ends, about a tenth of the instructions a
short connection costs greencmd (docs/performance.md). :class:`BoundedServer`
keeps the same bound with a set of greenlets and StreamServer's own hooks:
``spawn`` (a callable is documented), ``full()``, which the pool would
replace, and ``do_close()``, which closes each connection at its handler's end;
accepting starts again with ``start_accepting()``.

It is the one faster piece of the server, kept in a module of its own; the
twin does the same with Twisted's ``stopReading``/``startReading``.
"""

from __future__ import annotations

import gevent
from gevent.server import StreamServer

__all__ = ["BoundedServer"]


class BoundedServer(StreamServer):
    """A StreamServer running at most ``limit`` handlers; ``handlers`` holds their greenlets.

    A greenlet counts from its accept until its connection is closed.
    """

    def __init__(self, listener, handle=None, *, limit: int, **kwargs) -> None:
        super().__init__(listener, handle, spawn=self._spawn_counted, **kwargs)
        self.limit = limit
        self.handlers: set[gevent.Greenlet] = set()

    def full(self) -> bool:
        """True at the limit: StreamServer then stops accepting until a handler ends."""
        return len(self.handlers) >= self.limit

    def _spawn_counted(self, *args) -> gevent.Greenlet:
        # Counted here, at its accept, not when it starts to run: StreamServer
        # accepts a batch before any of their greenlets runs.
        greenlet = gevent.spawn(*args)
        self.handlers.add(greenlet)
        return greenlet

    def do_close(self, sock, *args) -> None:
        """Close the connection, as StreamServer does once its handler returns, and
        free its place (in the handler's greenlet: no frame of ours waits under it)."""
        try:
            super().do_close(sock, *args)
        finally:
            handlers = self.handlers
            handlers.discard(gevent.getcurrent())
            if len(handlers) == self.limit - 1 and self.started:
                self.start_accepting()  # it stopped at the limit
