"""The end of a server's signals: once its main loop is over, none of them may kill it.

SIGTERM and SIGINT start the shutdown and SIGHUP reopens the log while a server
runs, each engine with its own library's handlers. When the main loop has
ended, those handlers are gone (Python itself resets its own at exit), and the
signal's default would kill a process that is exiting cleanly: a log rotation's
SIGHUP or a second Ctrl-C in those last moments turned exit status 0 into
death by that signal (a failed unit for systemd). They are ignored instead, and
only then: a server that failed (it could not listen) leaves the process's
signals as an embedding caller had them.

asyncio's loop and gevent's libev put a signal's default back when they let go
of their handler, so each is let go of right before that signal is ignored:
the default, which kills, then holds for a few microseconds of Python, a
window a signal can still land in. (When all three handlers were dropped
first, the window was several times wider: a test that sends a signal every
3 ms through a clean stop hit it once in some fifteen runs of the suite.)
Twisted and greencmd's own handlers are replaced without passing by it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

__all__ = ["SERVER_SIGNALS", "ignore_server_signals", "let_go_of_signals"]

#: What a server answers: stop (twice) and reopen the log.
SERVER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignore_server_signals() -> None:
    """From now on SIGTERM, SIGINT and SIGHUP do nothing (SIGKILL still ends it)."""
    for signum in SERVER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def let_go_of_signals(let_go: Callable[[int], object], stopped: bool) -> None:
    """Drop a library's handlers, ``let_go(signum)`` for each server signal; after a
    clean stop (``stopped``: the process exits now) each signal is ignored right
    after its handler goes (see the module's docstring)."""
    for signum in SERVER_SIGNALS:
        let_go(signum)
        if stopped:
            signal.signal(signum, signal.SIG_IGN)
