"""The Twisted twin's server: a ServerFactory on an endpoint, max clients, shutdown.

``CommandFactory`` makes a :class:`CommandSession` per connection and keeps the
limits; ``run`` listens on a TCP or Unix endpoint (wrapped in Twisted's TLS
layer when asked) and stops through a before-shutdown trigger that waits on
each connection's ``closed`` Deferred. Compare ``gevent_engine/server.py``.
"""

from __future__ import annotations

import errno
import signal
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogPublisher

from ..core.errors import BindError, cannot_listen, describe_os_error
from ..core.listeners import clear_stale_socket, listening_on, remove_socket, unix_address
from ..core.logs import (
    AcceptFailureLog,
    flush_logs,
    install_flush_timer,
    log,
)
from ..core.settings import BACKLOG, LINGER_SECONDS, REFUSING, ServerConfig, format_address
from ..core.signals import ignore_server_signals
from ..core.startup import startup_lines
from ..core.systemd import Notifier
from .commands import ServerState
from .metrics import serve_metrics
from .session import CommandSession
from .tls import tls_options, with_tls

__all__ = ["CommandFactory", "run"]


class CommandFactory(ServerFactory):
    """Makes a :class:`CommandSession` per connection; holds the limits and shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: set[CommandSession] = set()
        self.state = ServerState.from_config(config, self.sessions)
        self.connected: set[CommandSession] = set()  # sessions, refusals, lingering hang-ups
        self.closing = False
        self.port = None
        #: The listener's TLS settings, None without TLS (see ``tls.ReloadableTLS``).
        self.tls = tls_options(config) if config.tls_cert else None

    def reopen_files(self) -> None:
        """On SIGHUP: log files, auth token and TLS files again (``BaseState.reopen_files``)."""
        self.tls = self.state.reopen_files(self.tls, lambda: tls_options(self.config))

    def buildProtocol(self, addr) -> CommandSession:
        """Number every accepted connection, refused ones included."""
        stats = self.state.stats
        number, stats.accepted = stats.accepted, stats.accepted + 1
        return CommandSession(self, number)

    def connection_opened(self, session: CommandSession) -> None:
        """Track a connection; stop accepting while sessions and refusals fill the bound."""
        self.connected.add(session)
        if len(self.connected) >= self.config.max_clients + REFUSING and not self.closing:
            self.port.stopReading()

    def connection_closed(self, session: CommandSession) -> None:
        """A connection ended: accept again if the bound had stopped it."""
        self.connected.discard(session)
        if len(self.connected) == self.config.max_clients + REFUSING - 1 and not self.closing:
            self.port.startReading()

    def is_full(self) -> bool:
        """True once ``max_clients`` sessions are open (the N-th is accepted)."""
        return len(self.sessions) >= self.config.max_clients or self.closing

    @defer.inlineCallbacks
    def shutdown(self):
        """Before reactor shutdown: stop listening, give commands grace, say bye.

        Follows end at once; commands in flight get ``--grace`` seconds; then
        every session says bye, and what has not closed a little later is cut off.
        """
        self.closing = True
        yield self.port.stopListening()
        log("Shutting down: stopped listening; %g seconds' grace for commands"
            % self.config.grace)
        for session in list(self.sessions):
            if session.following is not None:
                session.say_goodbye()
        running = [finished(s.running) for s in self.sessions if s.running is not None]
        if running:
            yield settled_within(defer.DeferredList(running), self.config.grace)
        for session in list(self.sessions):
            session.say_goodbye()
        connected = list(self.connected)
        closed = defer.DeferredList([s.closed for s in connected])
        if not (yield settled_within(closed, LINGER_SECONDS + 1)):
            # Only those still open: Twisted's TLS layer raises when one that closed
            # meanwhile is aborted.
            for session in list(self.connected):
                session.transport.abortConnection()


def finished(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires (with None) when ``d`` does, leaving ``d``'s result alone."""
    done = defer.Deferred()

    def passthrough(result):
        done.callback(None)
        return result

    d.addBoth(passthrough)
    return done


@defer.inlineCallbacks
def settled_within(d: defer.Deferred, seconds: float):
    """Wait for ``d`` at most ``seconds``, leaving ``d`` alone; True if it fired in time.

    The timeout cancels a stand-in, not ``d``: a DeferredList cancelled fires
    with its cancelled parts as results (no TimeoutError, so a wait that ran out
    looked settled), and leaves their CancelledErrors unhandled.
    """
    waiting = finished(d)
    waiting.addTimeout(seconds, reactor)
    try:
        yield waiting
    except defer.TimeoutError:
        return False
    return True


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
        self.log.say(describe_os_error(OSError(code, "")) if code else name)


def endpoint(config: ServerConfig):
    """The server endpoint for ``config``, and how the log names where it listens."""
    if config.unix:
        clear_stale_socket(config.unix)
        return (UNIXServerEndpoint(reactor, config.unix, BACKLOG, config.unix_mode, False),
                unix_address(config.unix))
    kind = TCP6ServerEndpoint if ":" in config.host else TCP4ServerEndpoint
    return (kind(reactor, config.port, BACKLOG, config.host),
            format_address(config.host, config.port))


def listen(config: ServerConfig, factory: CommandFactory) -> str:
    """Listen (before the reactor runs); where, as the log says it. Raises BindError."""
    where, named = endpoint(config)
    failure = None

    def failed(reason):
        nonlocal failure
        failure = reason.value

    where.listen(with_tls(factory)).addCallbacks(
        lambda port: setattr(factory, "port", port), failed)
    if isinstance(failure, CannotListenError):
        if config.unix:
            raise BindError("cannot listen on %s: %s" % (
                named, describe_os_error(failure.socketError))) from None
        raise cannot_listen(named, failure.socketError) from None
    if failure is not None:
        raise failure
    if config.unix:
        return named
    address = factory.port.getHost()
    return format_address(address.host, address.port)


def take_stop_signals() -> None:
    """SIGTERM and SIGINT stop the reactor, once: Twisted's own handlers (installed as
    it starts, so these come after) raise ReactorNotRunning for a second signal while
    shutdown runs, an unhandled error in the log."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: reactor.callFromThread(stop_once))


def stop_once() -> None:
    """Stop the reactor, unless it is stopping already."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def run(config: ServerConfig, listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT with the Twisted reactor; raises BindError.

    ``listener``: a socket already listening (passed by systemd), adopted as the port.
    """
    factory = CommandFactory(config)
    notifier = Notifier()
    reactor.suggestThreadPoolSize(config.hash_threads)
    if listener is None:
        where = listen(config, factory)
    else:
        factory.port = reactor.adoptStreamPort(listener.fileno(), listener.family,
                                               with_tls(factory))
        where = listening_on(listener)
        listener.close()  # the reactor has its own copy of the descriptor
    if config.metrics:
        metrics = serve_metrics(factory.state.metrics, *config.metrics)
        reactor.addSystemEventTrigger("before", "shutdown", metrics.stopListening)
    # Announced once the reactor runs: only then are the SIGTERM/SIGINT handlers in,
    # and whoever waits for this line may signal at once.
    reactor.callWhenRunning(take_stop_signals)
    reactor.callWhenRunning(log, "greencmd.twisted_engine.server.CommandFactory starting on %s"
                            % where)
    for line in startup_lines(config, factory.state.lastlog, factory.state.help):
        reactor.callWhenRunning(log, line)
    reactor.callWhenRunning(notifier.ready, where)
    if notifier.every:
        ticks = LoopingCall(lambda: notifier.tick(len(factory.sessions)))
        reactor.callWhenRunning(ticks.start, notifier.every, False)
    install_flush_timer(lambda delay, flush: reactor.callLater(delay, flush).cancel)
    reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)
    reactor.addSystemEventTrigger("before", "shutdown", factory.shutdown)
    globalLogPublisher.addObserver(AcceptFailures())
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(factory.reopen_files))
    reactor.run()
    ignore_server_signals()
    if config.unix and listener is None:
        remove_socket(config.unix)
    log("Main loop terminated.")
    flush_logs()
