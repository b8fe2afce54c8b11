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
import functools
import os
import shutil
import signal
import threading

from twisted.internet import defer, error, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from .. import auth, jobs, protocol
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
from ..errors import BindError, cannot_listen, describe_os_error
from ..listeners import clear_stale_socket, peer_name, remove_socket, unix_address
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
    other_protocol_reason,
    reopen_log_files,
    session_system,
)
from ..programs import OUTPUT_LIMIT, PluginCommand, ProgramCommand, load_extras, timed_out
from ..stats import Stats
from ..tls import HANDSHAKE_SECONDS

__all__ = ["ChildProtocol", "FollowProtocol", "CmdSession", "CmdFactory", "run"]

SETSID = shutil.which("setsid") or "setsid"


def spawn_child(protocol: ProcessProtocol, argv: list[str]) -> None:
    """Start ``argv`` in a session of its own, as the gevent engine does; raises OSError.

    Twisted's spawnProcess has no start_new_session, so the child goes through
    util-linux's ``setsid``, which becomes it. A program that does not exist is
    reported before that, with the same words as the gevent engine's.
    """
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    reactor.spawnProcess(protocol, SETSID, [SETSID, "--", *argv], env=os.environ,
                         childFDs={0: "w", 1: "r", 2: "r"})


class SessionChild(ProcessProtocol):
    """A child started by :func:`spawn_child`, which reads no stdin and can be killed
    with everything it started."""

    pid: int | None = None

    def connectionMade(self) -> None:
        """Note the pid (the transport forgets it once the child is reaped); close stdin."""
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def kill(self) -> None:
        """SIGKILL the child and its session; never raises.

        The child itself first: it may not have become a session leader yet.
        The group also after the reactor reaped the child: Linux keeps a process
        group's number while any process is still in the group.
        """
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        if self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class ChildProtocol(SessionChild):
    """Collects a child's output; ``done`` fires with a ``jobs.Finished`` when it ends.

    Past ``limit`` bytes of stdout, ``done`` fails with TooMuchOutput. Cancelling
    ``done`` (timeout, client gone, shutdown) kills the child and all it
    started; so does the child's own exit, so that nothing it left behind
    holds the pipes open. The reactor reaps it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done = defer.Deferred(lambda _: self.kill())
        self.out: list[bytes] = []
        self.err = b""
        self.size = 0

    def outReceived(self, data: bytes) -> None:
        """Buffer output, up to the size limit."""
        self.size += len(data)
        if self.size > self.limit:
            self.out.clear()
            self.kill()
        else:
            self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        """Keep the end of stderr for the error message."""
        self.err = (self.err + data)[-jobs.STDERR_KEPT:]

    def processExited(self, reason) -> None:
        """The child is gone: end whatever it left running in its session."""
        self.kill()

    def processEnded(self, reason) -> None:
        """Fire ``done``, unless it was cancelled already."""
        if self.done.called:
            return
        if self.size > self.limit:
            self.done.errback(jobs.TooMuchOutput())
            return
        status = reason.value.exitCode
        if status is None:
            status = -(reason.value.signal or 0)
        self.done.callback(jobs.Finished(status, b"".join(self.out), self.err))


class FollowProtocol(SessionChild):
    """``tail -F`` for a follow: streams its lines to the session as they come.

    Flow control by hand: the session pauses and resumes the child's pipe as
    the client's transport fills and drains. ``session.follow_ended`` is called
    with the last bytes when the child is gone.
    """

    def __init__(self, session: CmdSession) -> None:
        self.session = session
        self.lines = protocol.FollowLines()

    def outReceived(self, data: bytes) -> None:
        """Pass complete lines on to the client."""
        out = self.lines.feed(data)
        if out:
            self.session.transport.write(out)

    def processEnded(self, reason) -> None:
        """tail is gone (stopped, or by itself): the follow ends."""
        self.session.follow_ended(self)

    def stop(self) -> None:
        """End the follow: kill tail (``processEnded`` follows)."""
        self.kill()


def describe_openssl_error(exc: BaseException) -> str:
    """pyOpenSSL's error as the few words the gevent engine logs (``tlsv1 alert unknown ca``)."""
    errors = getattr(exc, "args", [None])[0]
    if isinstance(errors, list) and errors and len(errors[-1]) == 3:
        return str(errors[-1][2]).replace("_", " ").lower()
    return describe_os_error(exc) if isinstance(exc, OSError) else (str(exc) or "closed")


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class CmdSession(LineReceiver):
    """One client connection: lines in, replies out, one command at a time."""

    delimiter = b"\n"

    def __init__(self, factory: CmdFactory, number: int) -> None:
        self.factory = factory
        self.config = factory.config
        self.number = number
        self.host = self.system = ""  # known once connected
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
        self.following: FollowProtocol | None = None
        self.stall_timer = None
        self.authenticated = self.config.auth_token is None
        self.handshake_timer = None
        self.fresh = True  # nothing received yet: the first bytes are checked
        self.commands = factory.commands_for(self)

    # -- connection life cycle ------------------------------------------------

    def connectionMade(self) -> None:
        """Refuse past max clients; otherwise start the idle clock."""
        peer = self.transport.getPeer()
        # Under TLS, the transport wraps the one that has the socket.
        plain = getattr(self.transport, "transport", self.transport)
        self.host = peer_name(plain.getHandle(), (getattr(peer, "host", ""),))
        self.system = session_system(self.number, self.host)
        if self.config.tls_cert:
            self.handshake_timer = reactor.callLater(HANDSHAKE_SECONDS, self.handshake_late)
        self.factory.connection_opened(self)
        log_connection(self.host)
        if self.factory.is_full():
            self.factory.stats.refused += 1
            self.transport.write(protocol.TOO_MANY)
            self.hang_up(REFUSED)
            return
        self.factory.sessions.add(self)
        # Twisted tells us (pauseProducing) when replies pile up unread.
        self.transport.registerProducer(self, True)
        self.restart_idle_clock()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake is done; stop its clock."""
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.handshake_timer = None

    def handshake_late(self) -> None:
        """Timer: no handshake within HANDSHAKE_SECONDS; drop the client."""
        self.reason = "TLS handshake failed: no handshake within %g seconds" % HANDSHAKE_SECONDS
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        """Abandon a command in flight and log why the session ended."""
        if self.handshake_timer is not None:  # the handshake never completed
            self.handshake_failed(reason)
            return
        self.factory.sessions.discard(self)
        self.factory.connection_closed(self)
        self.stop_idle_clock()
        self.stop_stall_clock()
        self.paused = True
        if self.running is not None:
            self.running.cancel()
        if self.following is not None:
            self.end_follow()
        if self.reason is None:
            self.reason = CLEAN if reason.check(error.ConnectionDone) else RESET
        log_lost(self.reason, self.system)
        self.factory.session_idle()

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
        self.factory.sessions.discard(self)  # a session saying goodbye holds no slot
        self.stop_idle_clock()
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

    # -- lines in -------------------------------------------------------------

    def handshake_failed(self, reason) -> None:
        """The connection ended before its TLS handshake did: one log line, no session."""
        self.factory.sessions.discard(self)
        self.factory.connection_closed(self)
        self.stop_idle_clock()
        if self.handshake_timer.active():
            self.handshake_timer.cancel()
        why = self.reason or "TLS handshake failed: %s" % describe_openssl_error(reason.value)
        log(why, self.system)

    def dataReceived(self, data: bytes) -> None:
        """Frame lines; while a command runs, buffer only about one read ahead."""
        if self.fresh and data:
            self.fresh = False
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
            return
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
        suspect = protocol.other_protocol(request, line)
        if suspect:
            return self.drop(other_protocol_reason(suspect))
        if not self.config.quiet:
            log_request(self.host, protocol.loggable(request, line), self.system)
        if request.word in protocol.EXIT_WORDS:
            return self.hang_up(CLEAN)
        if request.word == b"auth" or not self.authenticated:
            return self.authenticate(request)
        command = self.commands.get(request.word)
        if command is None:
            self.transport.write(protocol.COMMAND_NOT_FOUND)
            self.factory.stats.served(request.word)
            return
        reply = command(request.arg)
        if isinstance(reply, defer.Deferred):
            self.wait_for(reply, request.word)
        elif reply is not None:  # None: a follow began
            self.transport.write(reply)
            self.factory.stats.served(request.word)

    def authenticate(self, request: protocol.Request) -> None:
        """``auth TOKEN``, or any request before it: the reply, or the end of the session."""
        try:
            reply = auth.reply_to(request, self.config.auth_token)
        except auth.NotAuthenticated as refused:
            self.transport.write(refused.goodbye)
            return self.hang_up(refused.reason)
        self.authenticated = True
        self.transport.write(reply)
        self.factory.stats.served(request.word)

    def drop(self, reason: str) -> None:
        """End the session at once, without a word (another protocol on the port)."""
        self._buffer = b""  # nothing more of it is read as requests
        self.hang_up(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Replies owed are written already (commands are held in order): refuse, close."""
        self.transport.write(protocol.LINE_TOO_LONG)
        self.hang_up(TOO_LONG)

    # -- flow control, by hand ----------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: take no more lines, read no more.

        In a follow, stop reading tail instead (and go on reading the client, for
        its stop line); a client that takes nothing for the idle timeout is dropped.
        """
        self.writes_blocked = True
        self.paused = True
        if self.following is not None:
            self.following.transport.pauseProducing()
            if self.config.idle_timeout:
                self.stall_timer = reactor.callLater(self.config.idle_timeout, self.stalled)
            return
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client took its replies: go on with the lines, unless a command runs."""
        self.writes_blocked = False
        if self.following is not None:
            self.stop_stall_clock()
            self.following.transport.resumeProducing()
            return
        if self.running is None and not self.hanging_up and not self.factory.closing:
            self.paused = self.reading_paused = False
            self.transport.resumeProducing()
            self.dataReceived(b"")
            if self.eof and not self.paused:
                self.finish_at_eof()

    # -- ordering, by hand ------------------------------------------------------

    def wait_for(self, reply: defer.Deferred, word: bytes) -> None:
        """Take no more lines until ``reply`` is written: replies stay in order."""
        self.paused = True
        self.stop_idle_clock()
        self.running = reply
        reply.addErrback(self.command_failed)
        reply.addCallback(self.deliver, word)

    def command_failed(self, failure) -> bytes | None:
        """Errback: cancelled (client gone, shutdown) -> nothing; a bug -> an error line."""
        if failure.check(defer.CancelledError):
            return None
        log("Command failed: %s" % failure.getErrorMessage(), self.system)
        return protocol.error("internal error: %s" % failure.getErrorMessage())

    def deliver(self, reply: bytes | None, word: bytes) -> None:
        """Callback: write the reply, then take the next line."""
        self.running = None
        if reply is None or self.hanging_up:
            return
        self.transport.write(reply)
        self.factory.stats.served(word)
        self.factory.session_idle()
        self.take_next_line()

    def take_next_line(self) -> None:
        """A reply is written: go on with the lines the client sent meanwhile."""
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
        tail = ChildProtocol(jobs.LASTLOG_MAX_BYTES)
        try:
            spawn_child(tail, argv)
        except OSError as exc:  # out of descriptors, or no tail
            return protocol.error("cannot run tail: %s" % describe_os_error(exc))
        d = tail.done
        d.addTimeout(timeout, reactor)
        d.addCallbacks(self.lastlog_done, self.child_failed, callbackArgs=(source,),
                       errbackArgs=(jobs.lastlog_timed_out(source, timeout),
                                    jobs.lastlog_result(source, None, None)))
        return d

    @staticmethod
    def lastlog_done(tail: jobs.Finished, source: str) -> bytes:
        """Callback: frame tail's output, or say why it failed."""
        return jobs.lastlog_result(source, tail.status, tail.output, tail.errors)

    @staticmethod
    def child_failed(failure, timed_out: bytes, too_much: bytes) -> bytes:
        """Errback: a timeout or too much output becomes its reply; the rest passes on."""
        failure.trap(defer.TimeoutError, jobs.TooMuchOutput)
        return timed_out if failure.check(defer.TimeoutError) else too_much

    def program(self, spec: ProgramCommand, arg: bytes) -> bytes | defer.Deferred:
        """A ``[commands.NAME]`` command: the same ProcessProtocol, other words."""
        try:
            argv = spec.argv(arg)
        except jobs.Refused as refused:
            return refused.reply
        timeout = self.config.command_timeout
        child = ChildProtocol(OUTPUT_LIMIT)
        try:
            spawn_child(child, argv)
        except OSError as exc:
            return spec.cannot_run(exc)
        d = child.done
        d.addTimeout(timeout, reactor)
        d.addCallbacks(lambda done: spec.reply(*done), self.child_failed,
                       errbackArgs=(timed_out(spec.name, timeout), spec.too_much()))
        return d

    def plugin(self, extra: PluginCommand, arg: bytes) -> defer.Deferred:
        """A plugin command: deferToThread, an errback for what it raises, a timeout.

        The timeout cannot stop the thread; it only stops the wait for it.
        """
        d = threads.deferToThread(extra.call, arg)
        d.addTimeout(self.config.command_timeout, reactor)
        d.addErrback(self.plugin_failed, extra)
        return d

    def plugin_failed(self, failure, extra: PluginCommand):
        """Errback: an exception becomes the error line and one logged traceback."""
        if failure.check(defer.CancelledError):
            return failure
        if failure.check(defer.TimeoutError):
            return timed_out(extra.name, self.config.command_timeout)
        return extra.failed(failure.value, failure.getTraceback(), self.system)

    def stats(self, arg: bytes) -> bytes:
        """``stats``: the factory's counters."""
        return self.factory.stats.reply()

    # -- follow -------------------------------------------------------------------

    def follow(self, arg: bytes) -> bytes | None:
        """``follow [N]``: the backlog now, then tail -F streamed until a line stops it.

        Returns an error reply, or None once the follow runs: the session takes
        no lines meanwhile (it is paused); dataReceived watches for the stop line.
        """
        factory = self.factory
        try:
            start = jobs.follow_start(arg, factory.lastlog_source, factory.lastlog_tried)
        except jobs.Refused as refused:
            return refused.reply
        tail = FollowProtocol(self)
        try:
            spawn_child(tail, start.argv)
        except OSError as exc:
            return protocol.error("cannot run tail: %s" % exc)
        self.transport.write(protocol.FOLLOW_BEGIN + start.backlog)
        self.following = tail
        self.paused = True
        self.stop_idle_clock()
        if b"\n" in self._buffer or self.eof:  # pipelined: stop once the backlog is out
            tail.stop()
        return None

    def follow_ended(self, tail: FollowProtocol) -> None:
        """tail is gone: send ``End follow``, drop the stop line, take the next line."""
        if self.following is not tail:
            return  # ended already (shutdown, or the client is gone)
        self.end_follow()
        line, newline, rest = self._buffer.partition(b"\n")
        if newline or self.eof:
            self._buffer = rest  # the stop line gets no reply
        self.take_next_line()

    def end_follow(self) -> None:
        """Write the follow's last bytes and ``End follow``; kill tail if it still runs."""
        tail, self.following = self.following, None
        self.factory.stats.served(b"follow")
        self.stop_stall_clock()
        tail.stop()
        if not self.hanging_up:
            self.transport.write(tail.lines.finish() + protocol.FOLLOW_END)

    def stalled(self) -> None:
        """Timer: the client took nothing of its follow for the idle timeout; drop it."""
        self.stall_timer = None
        self.reason = IDLE
        self.transport.abortConnection()

    def stop_stall_clock(self) -> None:
        """The client reads again, or the follow ended."""
        if self.stall_timer is not None and self.stall_timer.active():
            self.stall_timer.cancel()
        self.stall_timer = None

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
        if self.following is not None:
            self.end_follow()
        if not self.hanging_up:
            self.transport.write(protocol.SHUTTING_DOWN)
            self.hang_up(SHUTDOWN)


class CmdFactory(ServerFactory):
    """Makes a :class:`CmdSession` per connection; holds the limits and shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lastlog_source, self.lastlog_tried = choose_lastlog_source(config)
        self.extras = load_extras(config.commands)
        self.help = self.extras.help()
        self.sessions: set[CmdSession] = set()
        self.stats = Stats("twisted", config.max_clients, self.extras.names(), self.sessions)
        self.connected: set[CmdSession] = set()  # sessions, refusals, lingering hang-ups
        self.closing = False
        self.port = None
        self.idle: defer.Deferred | None = None

    def buildProtocol(self, addr) -> CmdSession:
        """Number every accepted connection, refused ones included."""
        number, self.stats.accepted = self.stats.accepted, self.stats.accepted + 1
        return CmdSession(self, number)

    def commands_for(self, session: CmdSession) -> dict:
        """A session's dispatch table: word -> method that returns a reply or a Deferred."""
        commands = {b"lastlog": session.lastlog, b"comhash": session.comhash,
                    b"help": lambda arg: self.help, b"stats": session.stats,
                    b"follow": session.follow}
        for spec in self.extras.programs:
            commands[spec.word] = functools.partial(session.program, spec)
        for extra in self.extras.plugins:
            commands[extra.word] = functools.partial(session.plugin, extra)
        return commands

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


def tls_options(config: ServerConfig):
    """Twisted's TLS settings from --tls-cert/--tls-key/--tls-client-ca (TLS 1.2+)."""
    from twisted.internet import ssl

    with open(config.tls_cert, "rb") as cert, open(config.tls_key, "rb") as key:
        chain, secret = cert.read(), key.read()
    # The file may hold a chain: the server's certificate first, then intermediates.
    blocks = [b"-----BEGIN CERTIFICATE-----" + block
              for block in chain.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    mine = ssl.PrivateCertificate.loadPEM(blocks[0] + b"\n" + secret)
    options = {"privateKey": mine.privateKey.original, "certificate": mine.original,
               "extraCertChain": [ssl.Certificate.loadPEM(block).original
                                  for block in blocks[1:]],
               "raiseMinimumTo": ssl.TLSVersion.TLSv1_2}
    if config.tls_client_ca:
        with open(config.tls_client_ca, "rb") as ca:
            authority = ssl.Certificate.loadPEM(ca.read())
        options.update(verify=True, caCerts=[authority.original], requireCertificate=True)
    return ssl.CertificateOptions(**options)


def listen(config: ServerConfig, factory: CmdFactory):
    """listenUNIX or listenTCP, as configured; the port and how to name it. Raises BindError."""
    if config.tls_cert:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls_options(config), False, factory)
    if config.unix:
        clear_stale_socket(config.unix)
        try:
            port = reactor.listenUNIX(config.unix, factory, backlog=BACKLOG,
                                      mode=config.unix_mode, wantPID=False)
        except error.CannotListenError as exc:
            raise BindError("cannot listen on %s: %s" % (
                unix_address(config.unix), describe_os_error(exc.socketError))) from None
        return port, unix_address(config.unix)
    try:
        port = reactor.listenTCP(config.port, factory, backlog=BACKLOG, interface=config.host)
    except error.CannotListenError as exc:
        raise cannot_listen(format_address(config.host, config.port), exc.socketError) \
            from None
    address = port.getHost()
    return port, format_address(address.host, address.port)


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT with the Twisted reactor; raises BindError."""
    factory = CmdFactory(config)
    reactor.suggestThreadPoolSize(config.hash_threads)
    factory.port, where = listen(config, factory)
    # Announced once the reactor runs: only then are its SIGTERM/SIGINT handlers in,
    # and whoever waits for this line may signal at once.
    reactor.callWhenRunning(log, "greencmd.compare.twisted_server.CmdFactory starting on %s"
                            % where)
    reactor.callWhenRunning(log, describe_lastlog_source(factory.lastlog_source,
                                                         factory.lastlog_tried))
    install_flush_timer(lambda delay, flush: reactor.callLater(delay, flush).cancel)
    reactor.addSystemEventTrigger("before", "shutdown", factory.shutdown)
    globalLogPublisher.addObserver(AcceptFailures())
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reopen_log_files))
    reactor.run()
    if config.unix:
        remove_socket(config.unix)
    log("Main loop terminated.")
    flush_logs()
