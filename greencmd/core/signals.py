"""The end of a server's signals: once its main loop is over, none of them may kill it.

SIGTERM and SIGINT start the shutdown and SIGHUP reopens the log while a server
runs, each engine with its own library's handlers. When the main loop has
ended, those handlers are gone (Python itself resets its own at exit), and the
signal's default would kill a process that is exiting cleanly: a log rotation's
SIGHUP or a second Ctrl-C in those last moments turned exit status 0 into
death by that signal (a failed unit for systemd). They are ignored instead, and
only then: a server that failed (it could not listen) leaves the process's
signals as an embedding caller had them.
"""

from __future__ import annotations

import signal

__all__ = ["ignore_server_signals"]

#: What a server answers: stop (twice) and reopen the log.
SERVER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignore_server_signals() -> None:
    """From now on SIGTERM, SIGINT and SIGHUP do nothing (SIGKILL still ends it)."""
    for signum in SERVER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
