"""The Twisted twin of greencmd's server: the same protocol, as Deferred callback chains.

Each part stands beside its gevent counterpart in ``greencmd compare``. Both
engines take their words from ``greencmd.protocol`` and their blocking work from
``greencmd.jobs``; they differ only in how they wait. What the gevent session
loop gets for free, this file does by hand: ordering (no line is taken until the
previous reply is written), state carried between callbacks, and every error
path split between a callback and an errback.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

from twisted.internet import defer, error, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from .. import jobs, protocol
from ..config import (
    BACKLOG,
    LINGER_BYTES,
    LINGER_SECONDS,
    RECV_SIZE,
    REFUSING,
    ServerConfig,
    choose_lastlog_source,
    describe_lastlog_source,
    format_address,
)
from ..errors import cannot_listen, describe_os_error
from ..logs import (
    CLEAN,
    IDLE,
    REFUSED,
    RESET,
    SHUTDOWN,
    TOO_LONG,
    AcceptFailureLog,
    flush_logs,
    install_flush_timer,
    log,
    log_connection,
    log_lost,
    log_request,
    reopen_log_files,
    session_system,
)

__all__ = ["TailProtocol", "CmdSession", "CmdFactory", "run"]


class TailProtocol(ProcessProtocol):
    """Collects ``tail``'s output; ``done`` fires with the reply when it ends.

    Cancelling ``done`` (timeout, client gone, shutdown) kills the child; the
    reactor reaps it.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.done = defer.Deferred(lambda _: self.kill())
        self.out: list[bytes] | None = []
        self.err: list[bytes] = []
        self.size = 0

    def connectionMade(self) -> None:
        """tail reads no stdin."""
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        """Buffer output (framed once, at the end), up to the size limit."""
        if self.out is None:
            return
        self.size += len(data)
        if self.size > jobs.LASTLOG_MAX_BYTES:
            self.out = None
            self.kill()
        else:
            self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        """Keep the start of stderr for the error message."""
        if sum(map(len, self.err)) < 4096:
            self.err.append(data)

    def processEnded(self, reason) -> None:
        """Fire ``done`` with the reply, unless it was cancelled already."""
        if self.done.called:
            return
        output = None if self.out is None else b"".join(self.out)
        status = getattr(reason.value, "exitCode", None)
        self.done.callback(jobs.lastlog_result(self.source, status, output, b"".join(self.err)))

    def kill(self) -> None:
        """SIGKILL the child if it still runs."""
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


@implementer(IHalfCloseableProtocol)
class CmdSession(LineReceiver):
    """One client connection: lines in, replies out, one command at a time."""

    delimiter = b"\n"

    def __init__(self, factory: CmdFactory, number: int, host: str) -> None:
        self.factory = factory
        self.config = factory.config
        self.host = host
        self.system = session_system(number, host)
        # One byte of slack for the CR that lineReceived strips.
        self.MAX_LENGTH = self.config.max_line + 1
        self.running: defer.Deferred | None = None
        self.reason: str | None = None
        self.eof = False
        self.hanging_up = False
        self.reading_paused = False
        self.writes_blocked = False
        self.dropped = 0
        self.idle_since = 0.0
        self.idle_timer = None
        self.commands = {b"lastlog": self.lastlog, b"comhash": self.comhash,
                         b"help": lambda arg: protocol.HELP}

    # -- connection life cycle ------------------------------------------------

    def connectionMade(self) -> None:
        """Refuse past max clients; otherwise start the idle clock."""
        self.factory.connection_opened(self)
        log_connection(self.host)
        if self.factory.is_full():
            self.transport.write(protocol.TOO_MANY)
            self.hang_up(REFUSED)
            return
        self.factory.sessions.add(self)
        # Twisted tells us (pauseProducing) when replies pile up unread.
        self.transport.registerProducer(self, True)
        self.restart_idle_clock()

    def connectionLost(self, reason) -> None:
        """Abandon a command in flight and log why the session ended."""
        self.factory.sessions.discard(self)
        self.factory.connection_closed(self)
        self.stop_idle_clock()
        self.paused = True
        if self.running is not None:
            self.running.cancel()
        if self.reason is None:
            self.reason = CLEAN if reason.check(error.ConnectionDone) else RESET
        log_lost(self.reason, self.system)
        self.factory.session_idle()

    def readConnectionLost(self) -> None:
        """EOF: answer what is left (a last line without LF counts), then close."""
        self.eof = True
        if self.hanging_up:
            self.transport.loseConnection()
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
        self.factory.sessions.discard(self)  # a session saying goodbye holds no slot
        self.stop_idle_clock()
        self.transport.loseWriteConnection()
        # A clean end with nothing unread closes at once (as the gevent engine does):
        # only unread input could turn the close into a reset.
        if self.eof or (reason == CLEAN and not self._buffer):
            self.transport.loseConnection()
        else:
            reactor.callLater(LINGER_SECONDS, self.transport.loseConnection)

    # -- lines in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Frame lines; while a command runs, buffer only about one read ahead."""
        if self.hanging_up:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.loseConnection()
            return
        super().dataReceived(data)
        if self.paused and not self.reading_paused and len(self._buffer) > RECV_SIZE:
            self.reading_paused = True
            self.transport.pauseProducing()

    def lineReceived(self, line: bytes) -> None:
        """Dispatch one request: a reply now, or a Deferred that holds the line."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.config.max_line:
            return self.lineLengthExceeded(line)
        self.restart_idle_clock()
        if self.factory.closing:
            self.paused = True  # no new commands; shutdown says bye
            return
        request = protocol.parse_request(line)
        if request is None:
            return
        if not self.config.quiet:
            log_request(self.host, line, self.system)
        if request.word in protocol.EXIT_WORDS:
            return self.hang_up(CLEAN)
        command = self.commands.get(request.word)
        if command is None:
            self.transport.write(protocol.COMMAND_NOT_FOUND)
            return
        reply = command(request.arg)
        if isinstance(reply, defer.Deferred):
            self.wait_for(reply)
        else:
            self.transport.write(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Replies owed are written already (commands are held in order): refuse, close."""
        self.transport.write(protocol.LINE_TOO_LONG)
        self.hang_up(TOO_LONG)

    # -- flow control, by hand ----------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: take no more lines, read no more."""
        self.writes_blocked = True
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client took its replies: go on with the lines, unless a command runs."""
        self.writes_blocked = False
        if self.running is None and not self.hanging_up and not self.factory.closing:
            self.paused = self.reading_paused = False
            self.transport.resumeProducing()
            self.dataReceived(b"")
            if self.eof and not self.paused:
                self.finish_at_eof()

    # -- ordering, by hand ------------------------------------------------------

    def wait_for(self, reply: defer.Deferred) -> None:
        """Take no more lines until ``reply`` is written: replies stay in order."""
        self.paused = True
        self.stop_idle_clock()
        self.running = reply
        reply.addErrback(self.command_failed)
        reply.addCallback(self.deliver)

    def command_failed(self, failure) -> bytes | None:
        """Errback: cancelled (client gone, shutdown) -> nothing; a bug -> an error line."""
        if failure.check(defer.CancelledError):
            return None
        log("Command failed: %s" % failure.getErrorMessage(), self.system)
        return protocol.error("internal error: %s" % failure.getErrorMessage())

    def deliver(self, reply: bytes | None) -> None:
        """Callback: write the reply, then take the next line."""
        self.running = None
        if reply is None or self.hanging_up:
            return
        self.transport.write(reply)
        self.factory.session_idle()
        if self.factory.closing or self.writes_blocked:
            return  # resumeProducing goes on once the client reads
        self.paused = False
        self.restart_idle_clock()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")
        if self.eof and not self.paused:
            self.finish_at_eof()

    # -- the commands -----------------------------------------------------------

    def lastlog(self, arg: bytes) -> bytes | defer.Deferred:
        """``lastlog [N]``: spawnProcess + ProcessProtocol, with a timeout errback."""
        factory = self.factory
        try:
            argv = jobs.lastlog_argv(arg, factory.lastlog_source, factory.lastlog_tried)
        except jobs.Refused as refused:
            return refused.reply
        source, timeout = factory.lastlog_source, self.config.command_timeout
        tail = TailProtocol(source)
        try:
            reactor.spawnProcess(tail, argv[0], argv, env=os.environ,
                                 childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as exc:  # out of descriptors, or no tail
            return protocol.error("cannot run tail: %s" % describe_os_error(exc))
        d = tail.done
        d.addTimeout(timeout, reactor)
        d.addErrback(self.lastlog_timed_out, source, timeout)
        return d

    @staticmethod
    def lastlog_timed_out(failure, source: str, timeout: float) -> bytes:
        """Errback: turn the timeout into the error reply; pass other failures on."""
        failure.trap(defer.TimeoutError)
        return jobs.lastlog_timed_out(source, timeout)

    def comhash(self, arg: bytes) -> bytes | defer.Deferred:
        """``comhash PATH``: deferToThread, then a callback and an errback.

        deferToThread's Deferred cannot stop its thread; cancelling the one
        returned here (client gone, shutdown) tells the thread to stop.
        """
        if not arg:
            return protocol.NO_PATH
        abandoned = threading.Event()
        d = defer.Deferred(lambda _: abandoned.set())
        threads.deferToThread(jobs.hash_file, arg, self.config.hash_root,
                              abandoned).chainDeferred(d)
        d.addCallbacks(self.hash_done, self.hash_failed)
        return d

    def hash_done(self, reply: bytes) -> bytes:
        """Callback: hash_file already made the reply (errors included)."""
        return reply

    def hash_failed(self, failure):
        """Errback: the thread itself failed; say so in one line. A cancel passes on."""
        if failure.check(defer.CancelledError):
            return failure
        return protocol.error(failure.getErrorMessage())

    # -- the idle clock -----------------------------------------------------------

    def restart_idle_clock(self) -> None:
        """Count idle time from now (one timer, moved lazily, not one per line)."""
        idle = self.config.idle_timeout
        if not idle:
            return
        self.idle_since = reactor.seconds()
        if self.idle_timer is None or not self.idle_timer.active():
            self.idle_timer = reactor.callLater(idle, self.idle_check)

    def stop_idle_clock(self) -> None:
        """Stop the clock while a command is answered, and at the end."""
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None

    def idle_check(self) -> None:
        """Timer: time out, or sleep again until the deadline the last line set."""
        self.idle_timer = None
        left = self.idle_since + self.config.idle_timeout - reactor.seconds()
        if left > 0:
            self.idle_timer = reactor.callLater(left, self.idle_check)
            return
        self.transport.write(protocol.IDLE_TIMEOUT)
        self.hang_up(IDLE)

    # -- shutdown ---------------------------------------------------------------

    def say_goodbye(self) -> None:
        """At shutdown: abandon a command still running, send the bye, close."""
        if self.running is not None:
            self.running.cancel()
        if not self.hanging_up:
            self.transport.write(protocol.SHUTTING_DOWN)
            self.hang_up(SHUTDOWN)


class CmdFactory(ServerFactory):
    """Makes a :class:`CmdSession` per connection; holds the limits and shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lastlog_source, self.lastlog_tried = choose_lastlog_source(config)
        self.sessions: set[CmdSession] = set()
        self.connected: set[CmdSession] = set()  # sessions, refusals, lingering hang-ups
        self.accepted = 0
        self.closing = False
        self.port = None
        self.idle: defer.Deferred | None = None

    def buildProtocol(self, addr) -> CmdSession:
        """Number every accepted connection, refused ones included."""
        number, self.accepted = self.accepted, self.accepted + 1
        return CmdSession(self, number, addr.host)

    def connection_opened(self, session: CmdSession) -> None:
        """Track a connection; stop accepting while sessions and refusals fill the bound."""
        self.connected.add(session)
        if len(self.connected) >= self.config.max_clients + REFUSING and not self.closing:
            self.port.stopReading()

    def connection_closed(self, session: CmdSession) -> None:
        """A connection ended: accept again if the bound had stopped it."""
        self.connected.discard(session)
        if len(self.connected) == self.config.max_clients + REFUSING - 1 and not self.closing:
            self.port.startReading()

    def is_full(self) -> bool:
        """True once ``max_clients`` sessions are open (the N-th is accepted)."""
        return len(self.sessions) >= self.config.max_clients or self.closing

    def session_idle(self) -> None:
        """A command finished or a session ended; wake a waiting shutdown."""
        if self.idle is not None and not any(s.running for s in self.sessions):
            self.idle, d = None, self.idle
            d.callback(None)

    @defer.inlineCallbacks
    def shutdown(self):
        """Before reactor shutdown: stop listening, give commands grace, say bye.

        (inlineCallbacks here: a chain of five callbacks would hide the order.)
        """
        self.closing = True
        yield self.port.stopListening()
        log("Shutting down: stopped listening; %g seconds' grace for commands"
            % self.config.grace)
        if any(s.running for s in self.sessions):
            self.idle = defer.Deferred()
            self.idle.addTimeout(self.config.grace, reactor)
            self.idle.addErrback(lambda failure: failure.trap(defer.TimeoutError))
            yield self.idle
            self.idle = None
        for session in list(self.sessions):
            session.say_goodbye()
        deadline = reactor.seconds() + LINGER_SECONDS + 1
        while self.connected and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        for session in list(self.connected):
            session.transport.abortConnection()


class AcceptFailures:
    """Turns Twisted's log of failed accepts into greencmd's log line.

    Twisted already copes with running out of descriptors (it accepts with a
    reserved one and closes at once: "EMFILE recovery"); this only says so, at
    most once a second.
    """

    def __init__(self) -> None:
        self.log = AcceptFailureLog()

    def __call__(self, event: dict) -> None:
        """A twisted.logger observer: pick out failed accepts."""
        text = event.get("log_format") or ""
        if text.startswith("EMFILE recovery: Closed"):
            name = "EMFILE"
        elif text.startswith("Could not accept"):
            name = str(event.get("acceptError"))  # an errno name
        else:
            return
        code = getattr(errno, name, None)
        reason = describe_os_error(OSError(code, "")) if code else name
        self.log.say(reason)


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT with the Twisted reactor; raises BindError."""
    factory = CmdFactory(config)
    reactor.suggestThreadPoolSize(config.hash_threads)
    try:
        factory.port = reactor.listenTCP(config.port, factory, backlog=BACKLOG,
                                         interface=config.host)
    except error.CannotListenError as exc:
        raise cannot_listen(format_address(config.host, config.port), exc.socketError) \
            from None
    address = factory.port.getHost()
    # Announced once the reactor runs: only then are its SIGTERM/SIGINT handlers in,
    # and whoever waits for this line may signal at once.
    reactor.callWhenRunning(log, "greencmd.compare.twisted_server.CmdFactory starting on %s"
                            % format_address(address.host, address.port))
    reactor.callWhenRunning(log, describe_lastlog_source(factory.lastlog_source,
                                                         factory.lastlog_tried))
    install_flush_timer(lambda delay, flush: reactor.callLater(delay, flush).cancel)
    reactor.addSystemEventTrigger("before", "shutdown", factory.shutdown)
    globalLogPublisher.addObserver(AcceptFailures())
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reopen_log_files))
    reactor.run()
    log("Main loop terminated.")
    flush_logs()
