"""``greencmd serve --workers N``: N server processes (gevent or asyncio) on one listening socket.

The parent binds the socket before forking (it never starts a gevent hub), then
supervises: a worker that dies is started again, SIGTERM/SIGINT is passed to
every worker, which drains as a single server would, and SIGHUP makes them all
reopen their log files. The kernel spreads connections over the workers that
wait in accept(). ``--max-clients`` applies to each worker, so the server as a
whole takes up to N times that many sessions.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import socket
import sys
import time

from ..core.listeners import listen_tcp, listen_unix, remove_socket, unix_address
from ..core.logs import flush_logs, log, reopen_log_files
from ..core.logtail import LastlogSource
from ..core.settings import ServerConfig, format_address
from ..core.startup import startup_lines

__all__ = ["run_workers"]

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>

#: A worker that dies sooner than this after its start is restarted only after
#: this long, so a worker that cannot start does not turn into a fork loop.
RESTART_BACKOFF = 1.0


def listen(config: ServerConfig) -> socket.socket:
    """A listening socket for ``config``; raises BindError."""
    if config.unix:
        return listen_unix(config.unix, config.unix_mode)
    return listen_tcp(config.host, config.port)


#: The engines that can serve on a socket the supervisor bound: their server modules.
ENGINE_SERVERS = {"gevent": "greencmd.gevent_engine.server",
                  "asyncio": "greencmd.asyncio_engine.server"}


def run_workers(config: ServerConfig, count: int, engine: str = "gevent") -> None:
    """Bind, start ``count`` workers of ``engine``, supervise them until SIGTERM/SIGINT."""
    listener = listen(config)
    where = (unix_address(config.unix) if config.unix
             else format_address(*listener.getsockname()[:2]))
    supervisor = Supervisor(config, listener, count, ENGINE_SERVERS[engine])
    supervisor.hold_signals()  # first: whoever waits for "starting on" may signal at once
    log("greencmd.workers.Supervisor (%d workers) starting on %s" % (count, where))
    for line in startup_lines(config, LastlogSource.choose(config)):
        log(line)
    try:
        supervisor.run()
    finally:
        if config.unix:
            remove_socket(config.unix)
    log("Main loop terminated.")
    flush_logs()


#: What the supervisor waits for: its workers' ends (SIGCHLD) and the signals it
#: passes on to them. They stay blocked in the supervisor and are taken one at a
#: time by sigwaitinfo(): a handler, run by Python between two bytecodes, could
#: run just before a wait for a child began, and the wait would not end for it
#: (seen: a SIGTERM right after the start-up lines left the supervisor waiting
#: for ever, one run in a dozen).
WAITED_FOR = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


class Supervisor:
    """Starts, restarts and stops the worker processes."""

    def __init__(self, config: ServerConfig, listener: socket.socket, count: int,
                 server_module: str) -> None:
        self.config = config
        self.server_module = server_module
        self.listener = listener
        self.count = count
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        #: Workers waiting out their restart back-off: index -> when to start it.
        self.restarts: dict[int, float] = {}
        self.stopping = False
        self.parent = os.getpid()

    def hold_signals(self) -> None:
        """From now on SIGTERM, SIGINT, SIGHUP and SIGCHLD wait for :meth:`run` to take
        them; past it, until the supervisor exits (a late one cannot turn status 0 into
        death)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_FOR)

    def run(self) -> None:
        """Start the workers, then until told to stop: restart those that die, pass
        SIGHUP on; SIGTERM or SIGINT stops them all, and it returns once they ended."""
        for index in range(self.count):
            self._start(index)
        while self.workers or self.restarts:
            signum = self._next_signal()
            if signum is None:
                self._start_due()
            elif signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                reopen_log_files()
                self._signal_all(signal.SIGHUP)
            else:
                self._stop()

    def _next_signal(self) -> int | None:
        """Wait for the next signal and take it; None if a restart falls due first."""
        if not self.restarts:
            return signal.sigwaitinfo(WAITED_FOR).si_signo
        wait = max(0.0, min(self.restarts.values()) - time.monotonic())
        taken = signal.sigtimedwait(WAITED_FOR, wait)
        return None if taken is None else taken.si_signo

    def _start_due(self) -> None:
        """Start the workers whose restart back-off is over."""
        now = time.monotonic()
        for index, due in list(self.restarts.items()):
            if due <= now:
                del self.restarts[index]
                self._start(index)

    def _reap(self) -> None:
        """Collect every worker that ended; unless stopping, start it again, a back-off
        later if it died soon after its start."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index, started = self.workers.pop(pid, (None, 0.0))
            if index is None:
                continue
            if self.stopping:
                log("Worker %d (pid %d) stopped" % (index, pid))
                continue
            exit_status = os.waitstatus_to_exitcode(status)
            if time.monotonic() - started >= RESTART_BACKOFF:
                log("Worker %d (pid %d) exited with status %d; starting it again"
                    % (index, pid, exit_status))
                self._start(index)
                continue
            # Meanwhile the supervisor goes on taking signals: a SIGTERM ends the wait.
            log("Worker %d (pid %d) exited with status %d within %g s of its start; "
                "starting it again in %g s" % (index, pid, exit_status, RESTART_BACKOFF,
                                               RESTART_BACKOFF))
            self.restarts[index] = time.monotonic() + RESTART_BACKOFF

    def _start(self, index: int) -> None:
        """Fork worker ``index``, unless the supervisor is stopping."""
        if self.stopping:
            return
        flush_logs()  # or the child inherits, and writes again, what is buffered
        pid = os.fork()
        if pid == 0:
            os._exit(self._work(index))
        self.workers[pid] = (index, time.monotonic())
        log("Worker %d started (pid %d)" % (index, pid))

    def _work(self, index: int) -> int:
        """In the child: run one server on the shared socket; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        # Until the server installs its own handler: a SIGHUP must not kill the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED_FOR)  # blocked in the supervisor
        if not stop_with_parent(self.parent):
            return 0
        try:
            # Imported here, in the child: gevent's hub (or asyncio's loop) is born here.
            server = importlib.import_module(self.server_module)
            server.run(self.config, listener=self.listener, supervised=True)
            return 0
        except BaseException as exc:  # noqa: BLE001 (a worker must never return into the parent's loop)
            log("Worker %d failed: %s" % (index, exc))
            return 1
        finally:
            flush_logs()

    def _stop(self) -> None:
        if not self.stopping:
            log("Stopping %d workers" % len(self.workers))
        self.stopping = True
        self.restarts.clear()  # a worker waiting to be started again is not started
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def stop_with_parent(parent: int) -> bool:
    """Have the kernel send SIGTERM when ``parent`` dies; False if it already has.

    A worker whose supervisor was killed (SIGKILL gives it no chance to pass
    SIGTERM on) must not serve on, unsupervised. Linux only; elsewhere a no-op.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent
