"""One client connection of the Twisted twin: a LineReceiver that runs one command at a time.

``lineReceived`` dispatches a request: the reply is written at once, or the
command's Deferred is waited for with the session paused (LineReceiver's own
``paused``: no line is taken until the reply is written, so replies stay in
order). The idle timeout is Twisted's ``TimeoutMixin``; the client's transport
tells :class:`ReplyBackpressure` when replies pile up unread; ``closed`` fires
when the connection is lost, which is what shutdown waits for. Compare
``gevent_engine/session.py``, where all of this is one loop.
"""

from __future__ import annotations

import time

from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from ..core import auth, protocol
from ..core.listeners import peer_name
from ..core.logs import (
    CLEAN,
    IDLE,
    REFUSED,
    RESET,
    SHUTDOWN,
    TOO_LONG,
    internal_error,
    log,
    log_connection,
    log_lost,
    log_request,
    other_protocol_reason,
    session_name,
)
from ..core.settings import LINGER_BYTES, LINGER_SECONDS, RECV_SIZE
from ..core.tls import HANDSHAKE_SECONDS, server_handshake_failure
from .follow import FollowProtocol, follow
from .tls import describe_openssl_error

__all__ = ["CommandSession", "ReplyBackpressure"]


@implementer(IPushProducer)
class ReplyBackpressure:
    """Registered with the client's transport: told when the client stops taking replies.

    While it is paused, the session takes no more lines and reads no more.
    """

    def __init__(self, session: CommandSession) -> None:
        self.session = session

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: take no lines, read nothing.

        The idle clock goes on: a client that takes nothing for that long is dropped.
        """
        session = self.session
        session.blocked = session.paused = True
        if not session.reading_paused:
            session.reading_paused = True
            session.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client took its replies."""
        self.session.blocked = False
        self.session.go_on()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the rest."""


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class CommandSession(LineReceiver, TimeoutMixin):
    """One client connection: lines in, replies out, one command at a time."""

    delimiter = b"\n"

    def __init__(self, server: ServerFactory, number: int) -> None:
        """``server``: the ``server.CommandFactory`` that made it (its limits, state, sessions)."""
        self.server = server
        self.state = server.state
        self.config = config = server.config
        self.number = number
        self.host = self.system = ""  # known once connected
        # One byte of slack for the CR that lineReceived strips.
        self.MAX_LENGTH = config.max_line + 1
        self.running: defer.Deferred | None = None  # the command in flight
        self.following: FollowProtocol | None = None
        self.blocked = False  # the client takes no replies (ReplyBackpressure)
        self.reading_paused = False
        self.reason: str | None = None
        self.eof = False
        self.hanging_up = False
        self.dropped = 0
        self.authenticated = self.state.auth_token is None
        self.first_bytes_checked = False
        self.follow_request: tuple[protocol.Request, float] | None = None
        self.handshake_timer = None
        self.replies = ReplyBackpressure(self)
        #: Fires when the connection is lost, however it ends.
        self.closed: defer.Deferred = defer.Deferred()

    # -- connection life cycle ------------------------------------------------

    def connectionMade(self) -> None:
        """Refuse past max clients; otherwise start the idle clock."""
        # Under TLS, the transport wraps the one that has the socket.
        plain = getattr(self.transport, "transport", self.transport)
        self.host = peer_name(plain.getHandle(), (getattr(self.transport.getPeer(), "host", ""),))
        self.system = session_name(self.number, self.host)
        if self.config.tls_cert:
            self.handshake_timer = reactor.callLater(HANDSHAKE_SECONDS, self.handshake_late)
        self.server.connection_opened(self)
        log_connection(self.host)
        if self.server.is_full():
            self.state.stats.refused += 1
            self.transport.write(protocol.TOO_MANY)
            self.hang_up(REFUSED)
            return
        self.server.sessions.add(self)
        self.transport.registerProducer(self.replies, True)
        self.setTimeout(self.config.idle_timeout or None)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake is done; stop its clock."""
        if self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.handshake_timer = None

    def handshake_late(self) -> None:
        """Timer: no handshake within HANDSHAKE_SECONDS; drop the client."""
        self.reason = "TLS handshake failed: no handshake within %g seconds" % HANDSHAKE_SECONDS
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        """Abandon a command in flight, log why the session ended, fire ``closed``."""
        self.setTimeout(None)
        self.server.sessions.discard(self)
        self.server.connection_closed(self)
        if self.handshake_timer is not None:  # the handshake never completed
            if self.handshake_timer.active():
                self.handshake_timer.cancel()
            log(self.reason or "TLS handshake failed: %s" % server_handshake_failure(
                describe_openssl_error(reason.value)), self.system, "tls_failed", "warning")
        else:
            self.paused = self.hanging_up = True  # nothing more is sent
            if self.running is not None:
                self.running.cancel()
            if self.following is not None:
                self.end_follow()
            if self.reason is None:
                self.reason = CLEAN if reason.check(error.ConnectionDone) else RESET
            log_lost(self.reason, self.system)
        self.closed.callback(None)

    def readConnectionLost(self) -> None:
        """EOF: answer what is left (a last line without LF counts), then close."""
        self.eof = True
        if self.hanging_up:
            self.transport.loseConnection()
        elif self.following is not None:
            self.following.stop()
        elif not self.paused:
            self.finish_at_eof()

    def writeConnectionLost(self) -> None:
        """Our FIN is out; nothing to do until the client's arrives."""

    def finish_at_eof(self) -> None:
        """Run the unterminated last line, if any, then hang up once it is answered."""
        rest = self.clearLineBuffer()
        if rest:
            self.lineReceived(rest)
        if not self.paused:
            self.hang_up(CLEAN)

    def hang_up(self, reason: str) -> None:
        """Send FIN after the replies owed; drop what the client still sends, a while."""
        if self.hanging_up:
            return
        self.reason, self.hanging_up, self.paused = reason, True, True
        self.server.sessions.discard(self)  # a session saying goodbye holds no slot
        self.setTimeout(None)
        if self.config.tls_cert:  # TLS has no half-close: close_notify once written, then close
            self.transport.unregisterProducer()  # else TLS waits for it before closing
            self.transport.loseConnection()
            return
        self.transport.loseWriteConnection()
        # A clean end with nothing unread closes at once (as the gevent engine does):
        # only unread input could turn the close into a reset.
        if self.eof or (reason == CLEAN and not self._buffer):
            self.transport.loseConnection()
        else:
            reactor.callLater(LINGER_SECONDS, self.transport.loseConnection)

    def timeoutConnection(self) -> None:
        """TimeoutMixin: no complete line within the idle timeout."""
        self.transport.write(protocol.IDLE_TIMEOUT)
        self.hang_up(IDLE)

    # -- lines in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Frame lines; while a command runs, buffer only about one read ahead."""
        if not self.first_bytes_checked and data:
            self.first_bytes_checked = True
            suspect = protocol.other_protocol_start(data)
            if suspect:
                return self.drop(other_protocol_reason(suspect))
        if self.hanging_up:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.loseConnection()
            return
        super().dataReceived(data)
        if self.following is not None:
            # Any line stops a follow; so does a line too long to be one.
            if b"\n" in self._buffer or len(self._buffer) > self.MAX_LENGTH:
                self.following.stop()
        elif self.paused and not self.reading_paused and len(self._buffer) > RECV_SIZE:
            self.reading_paused = True
            self.transport.pauseProducing()

    def lineReceived(self, line: bytes) -> None:
        """Dispatch one request: a reply now, or a Deferred the session waits for."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.config.max_line:
            return self.lineLengthExceeded(line)
        self.resetTimeout()
        if self.server.closing:
            self.paused = True  # no new commands; shutdown says bye
            return
        request = protocol.parse_request(line)
        if request is None:
            return
        suspect = protocol.other_protocol(request, line)
        if suspect:
            return self.drop(other_protocol_reason(suspect))
        if not self.config.quiet:
            log_request(self.host, protocol.loggable(request, line), self.system)
        if request.word in protocol.EXIT_WORDS:
            return self.hang_up(CLEAN)
        started = time.monotonic()
        if request.word == b"auth" or not self.authenticated:
            return self.authenticate(request, started)
        if request.word == b"follow":
            return self.start_follow(request, started)
        command = self.state.commands.get(request.word)
        if command is None:
            return self.answer(protocol.COMMAND_NOT_FOUND, request, started)
        try:
            reply = command(self.state, request.arg, self.system)
        except Exception as exc:  # a bug of ours or a plugin's: the session goes on
            reply = internal_error(request.word, exc, self.system)
        if isinstance(reply, defer.Deferred):
            self.wait_for(reply, request, started)
        else:
            self.answer(reply, request, started)

    def answer(self, reply: bytes, request: protocol.Request, started: float) -> None:
        """Write a reply, count it, audit it."""
        self.transport.write(reply)
        self.state.stats.served(request.word)
        self.state.finished(self.system, request, reply, started)

    def authenticate(self, request: protocol.Request, started: float) -> None:
        """``auth TOKEN``, or any request before it: the reply, or the end of the session."""
        try:
            reply = auth.reply_to(request, self.state.auth_token)
        except auth.NotAuthenticated as refused:
            self.state.finished(self.system, request, refused.goodbye, started)
            self.transport.write(refused.goodbye)
            return self.hang_up(refused.reason)
        self.authenticated = True
        self.answer(reply, request, started)

    def drop(self, reason: str) -> None:
        """End the session at once, without a word (another protocol on the port)."""
        self._buffer = b""  # nothing more of it is read as requests
        self.hang_up(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Replies owed are written already (commands are held in order): refuse, close."""
        self.transport.write(protocol.LINE_TOO_LONG)
        self.hang_up(TOO_LONG)

    # -- one command at a time ------------------------------------------------

    def wait_for(self, reply: defer.Deferred, request: protocol.Request,
                 started: float) -> None:
        """Take no more lines until ``reply`` is written: replies stay in order."""
        self.running = reply
        self.hold()
        reply.addErrback(self.command_failed, request.word)
        reply.addCallback(self.deliver, request, started)

    def command_failed(self, failure, word: bytes) -> bytes | None:
        """Errback: cancelled (client gone, shutdown) -> nothing; a bug -> an error line."""
        if failure.check(defer.CancelledError):
            return None
        return internal_error(word, failure.value, self.system)

    def deliver(self, reply: bytes | None, request: protocol.Request, started: float) -> None:
        """Callback: write the reply, then take the next line."""
        self.running = None
        if reply is None or self.hanging_up:
            return
        self.answer(reply, request, started)
        self.go_on()

    def hold(self) -> None:
        """Take no line for now (a command runs, a follow streams, the client reads nothing)."""
        self.paused = True
        self.setTimeout(None)

    def go_on(self) -> None:
        """Take the lines the client sent meanwhile, unless something still holds the session."""
        if (self.running is not None or self.following is not None or self.blocked
                or self.hanging_up or self.server.closing):
            return
        self.paused = False
        self.setTimeout(self.config.idle_timeout or None)
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")
        if self.eof and not self.paused:
            self.finish_at_eof()

    # -- follow ---------------------------------------------------------------

    def start_follow(self, request: protocol.Request, started: float) -> None:
        """``follow [N]``: an error reply, or tail -F streaming until a line stops it."""
        self.follow_request = (request, started)
        starting = follow(self, request.arg)
        if isinstance(starting, bytes):
            return self.answer(starting, request, started)
        self.running = starting
        self.hold()
        starting.addCallbacks(self.follow_began, self.command_failed, errbackArgs=(b"follow",))

    def follow_began(self, tail: bytes | FollowProtocol | None) -> None:
        """Callback: the backlog is out and tail runs (or the error reply to send)."""
        self.running = None
        if tail is None or self.hanging_up:
            return
        if isinstance(tail, bytes):
            self.answer(tail, *self.follow_request)
            return self.go_on()
        self.following = tail
        if self.reading_paused:  # the stop line must be seen
            self.reading_paused = False
            self.transport.resumeProducing()
        if b"\n" in self._buffer or self.eof:  # pipelined: stop once the backlog is out
            tail.stop()

    def follow_ended(self, tail: FollowProtocol) -> None:
        """tail is gone: send ``End follow``, drop the stop line, take the next line."""
        if self.following is not tail:
            return  # ended already (shutdown, or the client is gone)
        self.end_follow()
        _line, newline, rest = self._buffer.partition(b"\n")
        if newline or self.eof:
            self._buffer = rest  # the stop line gets no reply
        self.go_on()

    def end_follow(self) -> None:
        """Write the follow's last bytes and ``End follow``; kill tail if it still runs."""
        tail, self.following = self.following, None
        tail.stop()
        tail.producer.stopProducing()
        self.transport.unregisterProducer()
        self.state.stats.served(b"follow")
        request, started = self.follow_request
        self.state.finished(self.system, request, protocol.FOLLOW_END, started)
        if not self.hanging_up:
            self.blocked = False  # the transport pauses the producer again if it must
            self.transport.registerProducer(self.replies, True)
            self.transport.write(tail.lines.finish() + protocol.FOLLOW_END)

    def stalled(self) -> None:
        """The client took nothing of its follow for the idle timeout; drop it."""
        self.reason = IDLE
        self.transport.abortConnection()

    # -- shutdown -------------------------------------------------------------

    def say_goodbye(self) -> None:
        """At shutdown: abandon a command still running, send the bye, close."""
        if self.running is not None:
            self.running.cancel()
        if self.following is not None:
            self.end_follow()
        if not self.hanging_up:
            self.transport.write(protocol.SHUTTING_DOWN)
            self.hang_up(SHUTDOWN)
