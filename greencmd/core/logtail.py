"""What ``lastlog`` and ``follow`` ask of ``tail``, and what they answer. No sockets.

The line count and that there is a source are checked here before a child
runs; why ``tail`` could not read the source is asked after it failed (a
check before every ``lastlog`` would cost two path lookups per request for
the rare bad source). Every reply is worded here; the engines only run
``tail`` and wait for it, each in its own style.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import NamedTuple

from . import protocol
from .errors import duration
from .logs import flush_logs
from .protocol import Refused
from .settings import LASTLOG_CANDIDATES, ServerConfig

__all__ = ["LASTLOG_MAX_BYTES", "LastlogSource", "lastlog_argv", "lastlog_result",
           "lastlog_timed_out", "FollowStart", "follow_count", "follow_start"]

#: ``tail``, found on PATH once: each spawn would otherwise search PATH again, in
#: Python before the fork and with an execve per directory after it.
TAIL = shutil.which("tail") or "tail"
#: Most ``tail`` output a lastlog reply may carry; a log of giant lines is refused.
LASTLOG_MAX_BYTES = 4 << 20


class LastlogSource(NamedTuple):
    """The file ``lastlog`` and ``follow`` read (None: there is none), and what was tried."""

    path: str | None
    tried: tuple[str, ...]

    @classmethod
    def choose(cls, config: ServerConfig) -> LastlogSource:
        """An explicit ``--lastlog-file`` as it is (a missing one is reported when
        ``lastlog`` runs); otherwise the first readable system log, else the
        server's own log file, else none."""
        if config.lastlog_file:
            return cls(config.lastlog_file, (config.lastlog_file,))
        tried = LASTLOG_CANDIDATES + ((config.log_file,) if config.log_file else ())
        for path in tried:
            if os.path.isfile(path) and os.access(path, os.R_OK):
                return cls(path, tried)
        return cls(None, tried)

    def missing(self) -> str:
        """The error for ``lastlog`` when there is no source."""
        return ("no log file to tail (tried %s); start the server with --lastlog-file PATH"
                % ", ".join(self.tried))

    def describe(self) -> str:
        """The start-up log line that names the source, with a warning if it is missing."""
        if self.path is None:
            return "lastlog source: none (%s)" % self.missing()
        if not os.path.exists(self.path):
            return ("lastlog source: %s (warning: it does not exist; lastlog and follow fail "
                    "until it does)" % self.path)
        return "lastlog source: %s" % self.path


def lastlog_argv(arg: bytes, source: LastlogSource) -> list[str]:
    """The ``tail`` command line for ``lastlog ARG``; raises :class:`Refused`.

    Checked here: the line count, and that there is a source. A source that
    cannot be read is tail's to find, and :func:`lastlog_result`'s to word.
    """
    return [TAIL, "-n", str(_line_count("lastlog", arg, source)), "--", source.path]


def _line_count(command: str, arg: bytes, source: LastlogSource) -> int:
    """The line count of ``lastlog``/``follow``, once there is known to be a source."""
    try:
        count = protocol.parse_lastlog_count(arg, command)
    except ValueError as exc:
        raise Refused(protocol.error(str(exc))) from None
    if source.path is None:
        raise Refused(protocol.error(source.missing()))
    # The source may be the server's own log: what it logged must be on disk.
    flush_logs()
    return count


class FollowStart(NamedTuple):
    """How a ``follow`` begins: the backlog to send, then the ``tail -F`` to run."""

    backlog: bytes
    argv: list[str]


def follow_count(arg: bytes, source: LastlogSource) -> int:
    """The line count of ``follow ARG`` once the source is known to be readable.

    Raises :class:`Refused`. Cheap: the engines call it in their event loop, then
    :func:`follow_start` on a thread, since it reads up to 4 MiB.
    """
    count = _line_count("follow", arg, source)
    problem = _unreadable(source.path)
    if problem:
        raise Refused(protocol.error(problem))
    return count


def follow_start(path: str, count: int) -> FollowStart | bytes:
    """The backlog of a follow and the ``tail -F`` that goes on from its end, or the error reply.

    The backlog is read here, not by tail, so that it is complete before the
    follow can be stopped, and tail starts at the byte after it: no line is
    lost or sent twice. (A partial last line is left to tail, which sends it
    once it is complete.) Never raises: it runs on a worker thread.
    """
    try:
        backlog, offset = _last_lines(path, count)
    except OSError as exc:
        return protocol.error(str(exc))
    if backlog is None:
        return protocol.error("follow of %r: the last %d lines are over %d MiB; ask for "
                              "fewer lines" % (path, count, LASTLOG_MAX_BYTES >> 20))
    return FollowStart(protocol.log_lines(backlog),
                       [TAIL, "-c", "+%d" % (offset + 1), "-F", "--", path])


def _last_lines(path: str, count: int) -> tuple[bytes | None, int]:
    """The last ``count`` complete lines of ``path`` (None if over the limit), and the
    offset just after them."""
    with open(path, "rb") as f:
        position = f.seek(0, os.SEEK_END)
        chunks: list[bytes] = []
        size = ends = 0
        # Read backwards until count+1 line ends are in hand (or the file's start).
        while position > 0 and ends <= count:
            if size > LASTLOG_MAX_BYTES:
                return None, 0
            step = min(65536, position)
            position -= step
            f.seek(position)
            chunk = f.read(step)
            chunks.append(chunk)
            size += len(chunk)
            ends += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    cut = data.rfind(b"\n") + 1  # complete lines only
    lines = data[:cut].split(b"\n")[:-1][-count:]
    backlog = b"".join(line + b"\n" for line in lines)
    if len(backlog) > LASTLOG_MAX_BYTES:
        return None, 0
    return backlog, position + cut


def _unreadable(source: str) -> str | None:
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        return str(exc)
    if stat.S_ISDIR(mode):
        return str(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), source))
    if not os.access(source, os.R_OK):
        return str(PermissionError(errno.EACCES, os.strerror(errno.EACCES), source))
    return None


def lastlog_result(source: str, status: int | None, output: bytes | None,
                   errors: bytes = b"") -> bytes:
    """The ``lastlog`` reply once ``tail`` ended: its output framed, or an error.

    ``output`` is ``None`` when it went over :data:`LASTLOG_MAX_BYTES`; ``errors``
    is tail's stderr when it was read apart from ``output``. When tail failed
    because the source is missing, a directory or unreadable, the error says so
    as Python words it (``[Errno 2] No such file or directory: '...'``), in
    every engine alike, whatever tail's own message.
    """
    if output is None:
        return protocol.error("lastlog of %r is over %d MiB; ask for fewer lines"
                              % (source, LASTLOG_MAX_BYTES >> 20))
    if status != 0:
        problem = _unreadable(source)
        if problem:
            return protocol.error(problem)
        lines = (errors or output).decode("utf-8", "backslashreplace").strip().splitlines()
        why = lines[-1] if lines else "no message"
        return protocol.error("tail of %r failed with status %s: %s" % (source, status, why))
    return protocol.lastlog_reply(output)


def lastlog_timed_out(source: str, seconds: float) -> bytes:
    """The ``lastlog`` reply when ``tail`` ran past ``--command-timeout``."""
    return protocol.error("lastlog of %r did not finish within %s; stopped"
                          % (source, duration(seconds)))
