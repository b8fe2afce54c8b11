"""The engine-neutral work behind ``comhash`` and ``lastlog``.

Both engines run :func:`hash_file` in a worker thread and ``tail`` as a child
process; only how they wait differs. Nothing here touches a socket.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from typing import NamedTuple

from . import protocol
from .config import no_source_message
from .logs import flush_logs

__all__ = ["HASH_CHUNK", "LASTLOG_MAX_BYTES", "Refused", "hash_file", "lastlog_argv",
           "lastlog_result", "lastlog_timed_out", "FollowStart", "follow_start", "Finished",
           "TimedOut", "TooMuchOutput", "STDERR_KEPT"]

#: Read size for hashing: large enough that hashlib drops the GIL for most of it.
HASH_CHUNK = 1 << 20
#: Most ``tail`` output a lastlog reply may carry; a log of giant lines is refused.
LASTLOG_MAX_BYTES = 4 << 20

#: How much of a child's stderr is kept: enough for its last line.
STDERR_KEPT = 4096


class Finished(NamedTuple):
    """A child that exited: its status (negative: killed by that signal) and output."""

    status: int
    output: bytes
    errors: bytes


class TimedOut(Exception):
    """A child ran past its time; it has been killed."""


class TooMuchOutput(Exception):
    """A child printed more than it may; it has been killed."""


_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def hash_file(arg: bytes, root: str | None, abandoned: threading.Event | None = None) -> bytes:
    """The whole ``comhash`` reply for the path ``arg``; never raises.

    Runs in a worker thread. Errors come back as the reply, not as exceptions:
    gevent's ThreadPool prints a traceback for every exception a job raises. The
    file is streamed in chunks, so memory stays flat whatever its size; FIFOs and
    devices are never opened. Once ``abandoned`` is set (nobody waits for the
    reply any more) it stops within one chunk; what it returns then is dropped.
    """
    if not arg:
        return protocol.NO_PATH
    requested = protocol.decode_path(arg)
    if "\0" in requested:
        return protocol.error("%r: a file name cannot contain a NUL byte" % requested)
    try:
        path = requested if root is None else _inside_root(requested, root)
        return protocol.hash_reply(_sha1_of_regular_file(path, abandoned))
    except OutsideRoot:
        return protocol.error("%s: outside the allowed root" % requested)
    except (OSError, ValueError) as exc:
        return protocol.error(str(exc))


class OutsideRoot(Exception):
    """The path resolves to somewhere outside ``--hash-root``."""


def _inside_root(path: str, root: str) -> str:
    # Relative paths are taken from the root; realpath resolves symlinks and "..",
    # so a link inside the root that points outside it is refused.
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise OutsideRoot(path)
    return real


def _sha1_of_regular_file(path: str, abandoned: threading.Event | None) -> str:
    _require_regular(os.stat(path).st_mode, path)
    # O_NONBLOCK: if the path became a FIFO since stat(), open() must not hang.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        _require_regular(os.fstat(fd).st_mode, path)
        digest = hashlib.sha1()
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        while True:
            count = f.readinto(buffer)
            if not count or abandoned is not None and abandoned.is_set():
                return digest.hexdigest()
            digest.update(view[:count])


def _require_regular(mode: int, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise ValueError("Not a regular file (%s): %r" % (kind, path))


class Refused(Exception):
    """A command that must not run; ``reply`` is what the client gets instead."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


def lastlog_argv(arg: bytes, source: str | None, tried: tuple[str, ...]) -> list[str]:
    """The ``tail`` command line for ``lastlog ARG``; raises :class:`Refused`.

    Everything that can be checked before spawning a child is checked here: the
    line count, that there is a source, and that it can be read.
    """
    count = _checked_source("lastlog", arg, source, tried)
    return ["tail", "-n", str(count), "--", source]


def _checked_source(command: str, arg: bytes, source: str | None,
                    tried: tuple[str, ...]) -> int:
    """The line count of ``lastlog``/``follow``, once the source is known to be readable."""
    try:
        count = protocol.parse_lastlog_count(arg, command)
    except ValueError as exc:
        raise Refused(protocol.error(str(exc))) from None
    if source is None:
        raise Refused(protocol.error(no_source_message(tried)))
    problem = _unreadable(source)
    if problem:
        raise Refused(protocol.error(problem))
    # The source may be the server's own log: what it logged must be on disk.
    flush_logs()
    return count


class FollowStart(NamedTuple):
    """How a ``follow`` begins: the backlog to send, then the ``tail -F`` to run."""

    backlog: bytes
    argv: list[str]


def follow_start(arg: bytes, source: str | None, tried: tuple[str, ...]) -> FollowStart:
    """The backlog of ``follow ARG`` and the ``tail -F`` that goes on from its end.

    The backlog is read here, not by tail, so that it is complete before the
    follow can be stopped, and tail starts at the byte after it: no line is
    lost or sent twice. (A partial last line is left to tail, which sends it
    once it is complete.) Raises :class:`Refused`.
    """
    count = _checked_source("follow", arg, source, tried)
    try:
        backlog, offset = _last_lines(source, count)
    except OSError as exc:
        raise Refused(protocol.error(str(exc))) from None
    if backlog is None:
        raise Refused(protocol.error("follow of %r: the last %d lines are over %d MiB; ask "
                                     "for fewer lines" % (source, count,
                                                          LASTLOG_MAX_BYTES >> 20)))
    return FollowStart(protocol.log_lines(backlog),
                       ["tail", "-c", "+%d" % (offset + 1), "-F", "--", source])


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
    is tail's stderr when it was read apart from ``output``.
    """
    if output is None:
        return protocol.error("lastlog of %r is over %d MiB; ask for fewer lines"
                              % (source, LASTLOG_MAX_BYTES >> 20))
    if status != 0:
        lines = (errors or output).decode("utf-8", "backslashreplace").strip().splitlines()
        why = lines[-1] if lines else "no message"
        return protocol.error("tail of %r failed with status %s: %s" % (source, status, why))
    return protocol.lastlog_reply(output)


def lastlog_timed_out(source: str, seconds: float) -> bytes:
    """The ``lastlog`` reply when ``tail`` ran past ``--command-timeout``."""
    return protocol.error("lastlog of %r did not finish within %g seconds; stopped"
                          % (source, seconds))
