"""``follow [N]`` for the Twisted twin: tail's transport is the client's producer.

The backlog is read on a thread, then written; then ``tail -F``'s output goes to the client as
it arrives. Flow control is Twisted's own, as in ``twisted/protocols/portforward.py``:
tail's process transport is registered as the producer of the client's
transport, so a client that stops reading pauses tail. :class:`StallWatch`
only adds the spec's clock: a client that takes nothing for the idle timeout
is dropped. The session sees the stop line and kills tail; ``ended`` fires at
``processEnded``. Compare ``gevent_engine/follow.py``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..core import logtail, protocol
from ..core.settings import ServerConfig
from . import processes
from .commands import ServerState

__all__ = ["FollowProtocol", "StallWatch", "follow", "begin"]


class Following(Protocol):
    """What a follow needs of its session (``session.CommandSession`` has it)."""

    transport: object
    state: ServerState
    config: ServerConfig

    def stalled(self) -> None:
        """The client took nothing for the idle timeout."""

    def follow_ended(self, tail: FollowProtocol) -> None:
        """tail is gone."""


class FollowProtocol(processes.SessionChild):
    """``tail -F`` of a follow: complete lines go to the client as they come."""

    def __init__(self, client) -> None:
        self.client = client  # the client's transport
        self.lines = protocol.FollowLines()
        self.ended: defer.Deferred = defer.Deferred()
        self.producer: StallWatch | None = None  # registered with the client's transport

    def outReceived(self, data: bytes) -> None:
        """Pass complete lines on to the client."""
        out = self.lines.feed(data)
        if out:
            self.client.write(out)

    def processEnded(self, reason) -> None:
        """tail is gone (stopped, or by itself): the follow ends."""
        self.ended.callback(self)

    def stop(self) -> None:
        """End the follow: kill tail (``processEnded`` follows)."""
        self.kill()


@implementer(IPushProducer)
class StallWatch:
    """tail's transport as the client's producer, with the clock of a client that stalls."""

    def __init__(self, tail, timeout: float, stalled) -> None:
        self.tail, self.timeout, self.stalled = tail, timeout, stalled
        self.timer = None

    def pauseProducing(self) -> None:
        """The client's buffer is full: pause tail, start the clock."""
        self.tail.pauseProducing()
        if self.timeout and self.timer is None:
            self.timer = reactor.callLater(self.timeout, self.stalled)

    def resumeProducing(self) -> None:
        """The client reads again: stop the clock, resume tail."""
        self.stopProducing()
        self.tail.resumeProducing()

    def stopProducing(self) -> None:
        """Stop the clock (the follow ended, or the connection did)."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def follow(session: Following, arg: bytes) -> bytes | defer.Deferred:
    """Start a follow: the error reply now, or a Deferred of the running tail (or of the
    error reply) once the backlog, read on a thread, is written."""
    try:
        count = logtail.follow_count(arg, session.state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    d = threads.deferToThread(logtail.follow_start, session.state.lastlog.path, count)
    return d.addCallback(begin, session)


def begin(start: logtail.FollowStart | bytes,
          session: Following) -> bytes | FollowProtocol:
    """Callback: write the backlog, start tail -F, make its transport the client's producer."""
    if isinstance(start, bytes):
        return start
    tail = FollowProtocol(session.transport)
    try:
        processes.spawn(tail, start.argv)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % exc)
    session.transport.write(protocol.FOLLOW_BEGIN + start.backlog)
    tail.producer = StallWatch(tail.transport, session.config.idle_timeout, session.stalled)
    session.transport.unregisterProducer()
    session.transport.registerProducer(tail.producer, True)
    tail.ended.addCallback(session.follow_ended)
    return tail
