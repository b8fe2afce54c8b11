"""The server log: Twisted's line format on top of the stdlib ``logging`` module.

A line reads ``2026-11-26 13:32:32+0000 [system] message``, where ``system`` says
who speaks (``-`` for the server's life cycle, ``CommandServer`` for the listener,
``CmdSession,N,HOST`` for one session). Records go to stdout and, optionally, are
appended to a file that rotates by size and that SIGHUP reopens (for logrotate).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from logging.handlers import RotatingFileHandler
from typing import TextIO

from .errors import describe_os_error
from .protocol import error, printable

__all__ = ["LOGGER_NAME", "TwistedFormatter", "LogFileHandler", "default_log_file",
           "setup_logging", "log", "reopen_log_files", "reopen_on_sighup", "session_name",
           "log_connection", "log_lost", "log_request", "internal_error", "install_flush_timer",
           "flush_logs", "emit_record", "AcceptFailureLog", "RateLimit", "use_json_lines",
           "json_line"]

LOGGER_NAME = "greencmd"
LIFECYCLE = "-"
LISTENER = "CommandServer"
SESSION = "CmdSession"

# Why a session ended, as "Lost client connection. Reason: ..." says it.
CLEAN = "Connection was closed cleanly."
RESET = "Connection was reset by peer."
IDLE = "Idle timeout."
TOO_LONG = "Line too long."
REFUSED = "Refused: too many connections."
SHUTDOWN = "Server shutting down."
AUTH_FAILED = "Authentication failed."
AUTH_REQUIRED = "Authentication required."


def other_protocol_reason(name: str) -> str:
    """The log's reason for a session ended because it spoke another protocol."""
    return "Suspected %s on the command port; closed without a reply." % name


class TwistedFormatter(logging.Formatter):
    """Formats records as Twisted's ``FileLogObserver`` did."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        """``YYYY-MM-DD HH:MM:SS+ZZZZ [system] message``."""
        return self.line(record.created, getattr(record, "system", LIFECYCLE),
                         record.getMessage())[:-1]

    def line(self, created: float, system: str, message: str) -> str:
        """The log line of ``message`` said by ``system`` at ``created``, with its LF."""
        second = int(created)
        # One strftime per second, not per line: it dominates a busy log otherwise.
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S%z", time.localtime(second))
        return f"{self._stamp} [{system}] {message}\n"


#: Longest a log line waits in a buffer once the engine's timer is installed.
FLUSH_DELAY = 0.05
#: Most bytes one write() to a pipe delivers whole, beside other writers.
PIPE_BUF = getattr(select, "PIPE_BUF", 512)


def line_bytes(line: str) -> int:
    """How many bytes ``line`` takes in the log (UTF-8, as the log file writes it)."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "backslashreplace"))


def pieces(text: str, limit: int) -> Iterator[str]:
    """``text`` (whole lines) cut at line ends into pieces of at most ``limit`` bytes.

    A line longer than ``limit`` is a piece of its own: nothing is ever dropped
    or cut inside a line. The usual batch is shorter than ``limit`` and ASCII:
    one piece, no search.
    """
    # A character takes at most 6 bytes as the log writes it (UTF-8, or a
    # lone surrogate as "\udcxx"): counting characters is then enough.
    chars = limit if text.isascii() else limit // 6
    start, end = 0, len(text)
    while end - start > chars:
        cut = text.rfind("\n", start, start + chars) + 1
        if cut <= start:  # one line longer than limit
            cut = text.find("\n", start + chars) + 1 or end
        yield text[start:cut]
        start = cut
    if start < end:
        yield text[start:]


def runs_within(lines: list[str], limit: int, used: int = 0) -> Iterator[tuple[list[str], int]]:
    """``lines`` cut into runs of at most ``limit`` bytes, each with the bytes it fills.

    The first run starts ``used`` bytes full (it may then be empty, and its
    figure counts ``used``). A line longer than ``limit`` makes a run of its
    own: nothing is ever dropped or cut.
    """
    run: list[str] = []
    size = used
    for line in lines:
        length = line_bytes(line)
        if size and size + length > limit:
            yield run, size
            run, size = [], 0
        run.append(line)
        size += length
    yield run, size


class BufferedStreamHandler(logging.StreamHandler):
    """Writes the lines :func:`log` was given in batches, a few KiB of whole lines per write().

    A write() per line costs more than answering a command (stdout with
    ``PYTHONUNBUFFERED=1``, common in containers, would write each line as it
    comes). Every write is whole lines, and small enough that workers sharing
    stdout or the log file never cut one another's lines.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """A record from the ``logging`` API (not :func:`log`): written at once."""
        try:
            self.write_text(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def write_text(self, text: str) -> None:
        """Write ``text``, whole lines each with its LF, a few KiB per write(); never raises.

        A write() to a pipe is whole only up to PIPE_BUF bytes: a larger one can
        be cut by another worker's. So each write holds whole lines, at most
        PIPE_BUF bytes of them (a longer line goes alone). The log must never take
        a session down: a stream that is gone (stdout closed, disk full) loses the
        lines, and the other handlers still get them.
        """
        try:
            for piece in pieces(text, PIPE_BUF):
                self.stream.write(piece)
                self.stream.flush()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        """Flush the stream; never raises (see :meth:`write_text`)."""
        try:
            super().flush()
        except (OSError, ValueError):
            pass


class Flusher:
    """Writes the lines :func:`log` made, FLUSH_DELAY after the first one not yet written.

    A session's path pays for its line, not for a write() and a call per
    handler: the lines wait here and go out in one batch (measured under
    connection churn). They wait as strings, which the garbage collector never
    looks at: a tuple per line, kept until the flush, made the collector run
    every few hundred connections (docs/performance.md).
    """

    def __init__(self) -> None:
        self.schedule: Schedule | None = None
        self.cancel: Callable[[], object] | None = None  # the pending flush's
        #: Each line not yet written, with its LF.
        self.lines: list[str] = []

    def start(self) -> None:
        """Called for the first line not yet written: flush FLUSH_DELAY later, or now
        when no timer is installed."""
        if self.schedule is None:
            self.flush()
        else:
            self.cancel = self.schedule(FLUSH_DELAY, self._due)

    def _due(self) -> None:
        self.cancel = None
        self.flush()

    def flush(self) -> None:
        """Write every line made so far (a flush already scheduled still comes)."""
        if not self.lines:
            return
        lines, self.lines = self.lines, []  # one step: a signal handler may log meanwhile
        text = "".join(lines)
        for handler in _logger.handlers:
            if isinstance(handler, BufferedStreamHandler):
                handler.write_text(text)

    def stop(self) -> None:
        """Flush now, cancel the pending flush, and flush each line at once from now on."""
        cancel, self.cancel, self.schedule = self.cancel, None, None
        if cancel is not None:
            cancel()
        self.flush()


#: ``schedule(delay, callback)`` runs ``callback`` after ``delay`` seconds in the
#: engine's event loop, and returns a function that cancels it.
Schedule = Callable[[float, Callable[[], None]], Callable[[], object]]
_flusher = Flusher()
atexit.register(_flusher.flush)  # before logging's own shutdown (atexit runs newest first)


def install_flush_timer(schedule: Schedule) -> Callable[[], None]:
    """Let the engine run the log flushes; returns the function that stops them."""
    _flusher.schedule = schedule
    return _flusher.stop


def flush_logs() -> None:
    """Write out every log line not yet written (before tail reads the log, at exit)."""
    _flusher.flush()


class LogFileHandler(BufferedStreamHandler, RotatingFileHandler):
    """Appends to a file; rotates it by size (the stdlib's rollover); SIGHUP reopens it.

    ``max_bytes`` 0 never rotates (leave it to logrotate and SIGHUP). Otherwise,
    once a line would take the file past ``max_bytes``, the file is renamed
    ``.1`` (older ones shift up, ``keep`` are kept) and a new one is started.
    """

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 0) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        super().__init__(path, mode="a", maxBytes=max_bytes, backupCount=keep,
                         encoding="utf-8", errors="backslashreplace")
        self.written = self._size()
        self.failing = False  # a rotation failed, and no reopen worked since

    def _size(self) -> int:
        return os.fstat(self.stream.fileno()).st_size

    def write_text(self, text: str) -> None:
        """Write ``text`` (whole lines), rotating first where a line would take the file
        past the limit (each file ends with a whole line and stays within the limit)."""
        size = line_bytes(text)
        if not self.maxBytes or self.written + size <= self.maxBytes:  # the usual case
            super().write_text(text)
            self.written += size
            return
        lines = [line + "\n" for line in text.split("\n")[:-1]]  # (text ends with a LF)
        for number, (run, size) in enumerate(runs_within(lines, self.maxBytes, self.written)):
            if number:  # the run before filled the file
                self.doRollover()
            super().write_text("".join(run))
            self.written = size

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        """Rotate as RotatingFileHandler does. If that fails (the directory is gone or
        read-only), say so once: the file's lines are lost until a SIGHUP reopens it,
        as they are when a write fails; stdout still has them."""
        try:
            super().doRollover()
        except OSError as exc:
            if self.stream is None:  # closed for the rotation, and not opened again
                self.stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
            if not self.failing:
                self.failing = True
                log("Cannot rotate the log file %s: %s; its lines are lost until a SIGHUP "
                    "reopens it" % (self.baseFilename, describe_os_error(exc)), level="error")
        else:
            self.failing = False

    def reopen(self) -> bool:
        """Close and reopen the file, e.g. after logrotate moved it (SIGHUP); False (and
        one log line) if it cannot be opened: writing goes on where it did."""
        self.acquire()
        try:
            try:
                os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
                new = self._open()
            except OSError as exc:
                log("Cannot reopen the log file %s: %s; it goes on writing where it did"
                    % (self.baseFilename, describe_os_error(exc)), level="error")
                return False
            old, self.stream = self.stream, new
            old.close()
            self.written = self._size()
            self.failing = False
            return True
        finally:
            self.release()


def default_log_file() -> str:
    """``$XDG_STATE_HOME/greencmd/server.log``, or under ``~/.local/state``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "greencmd", "server.log")


def setup_logging(log_file: str | None, stream: TextIO | None = None, max_bytes: int = 0,
                  keep: int = 0) -> LogFileHandler | None:
    """Send the ``greencmd`` log to stdout and ``log_file``; returns the file handler.

    The file rotates at ``max_bytes`` (0: never), keeping ``keep`` old files.
    Raises OSError when the log file cannot be opened.
    """
    _flusher.flush()  # lines logged so far go where the log went until now
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Fields the format never shows, each computed for every record otherwise.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    formatter = _formatter
    handlers: list[logging.Handler] = [BufferedStreamHandler(stream or sys.stdout)]
    file_handler = LogFileHandler(log_file, max_bytes, keep) if log_file else None
    if file_handler:
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    global _own_handlers
    _own_handlers = len(handlers)
    return file_handler


_logger = logging.getLogger(LOGGER_NAME)
_formatter = TwistedFormatter()
#: How many handlers on the logger are greencmd's own (set up by setup_logging).
_own_handlers = 0


#: Other files a SIGHUP reopens (the audit log): each a function that reopens its
#: file, or says why it cannot and returns False.
_also_reopened: list[Callable[[], bool]] = []


def reopen_on_sighup(reopen: Callable[[], bool]) -> None:
    """Have :func:`reopen_log_files` call ``reopen`` too."""
    _also_reopened.append(reopen)


def reopen_log_files() -> None:
    """Reopen every log file (on SIGHUP, after logrotate moved them), and say so."""
    _flusher.flush()  # lines logged before the SIGHUP go where the file was
    reopened = [handler.reopen() for handler in _logger.handlers
                if isinstance(handler, LogFileHandler)]
    reopened += [reopen() for reopen in _also_reopened]
    if all(reopened):
        log("Log file reopened.")


def log(message: str, system: str = LIFECYCLE, event: str = "server", level: str = "info",
        **fields: object) -> None:
    """Log one line as ``system``: ``message`` in the text format; with ``--log-format
    json``, an object of ``event``, ``level``, ``fields`` and the message.

    The line is written by the :class:`Flusher`, at most FLUSH_DELAY later: a
    LogRecord per line (and the caller lookup Logger.info() does) costs more
    than answering a command. Someone else's handler on the ``greencmd`` logger
    gets a record at once, as ``logging`` would give it. All logging happens on
    the event loop's thread.
    """
    created = time.time()
    if _json_lines:
        line = json_line(created, system, message, event, level, fields) + "\n"
    else:
        line = _formatter.line(created, system, message)
    flusher = _flusher
    flusher.lines.append(line)
    if flusher.cancel is None:  # no flush pending
        flusher.start()
    if len(_logger.handlers) > _own_handlers:
        emit_record(created, system, message)


def emit_record(created: float, system: str, message: str) -> None:
    """Give a record of the line to each handler on the ``greencmd`` logger that is not
    greencmd's own (its own get the line from the :class:`Flusher`)."""
    record = _logger.makeRecord(LOGGER_NAME, logging.INFO, "", 0, message, None, None,
                                extra={"system": system})
    record.created = created
    for handler in _logger.handlers:
        if not isinstance(handler, BufferedStreamHandler):
            handler.handle(record)


class RateLimit:
    """Says yes to a key at most once per ``interval`` seconds: for log lines anyone can cause."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: dict[object, float] = {}

    def allow(self, key: object = None) -> bool:
        """True when ``key`` was not allowed within the last ``interval`` seconds."""
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            return False
        if len(self.last) > 10000:  # keys may come from clients: keep the table small
            self.last.clear()
        self.last[key] = now
        return True


class AcceptFailureLog:
    """Says that connections cannot be accepted (out of descriptors), at most once a second.

    Every engine uses it, so the line reads the same whichever runs.
    """

    def __init__(self) -> None:
        self.limit = RateLimit(1.0)

    def say(self, reason: str) -> None:
        """Log that accepting failed for ``reason``, unless it was said less than a second ago."""
        if self.limit.allow():
            log("Cannot accept connections: %s; open sessions go on" % reason,
                event="accept_failed", level="error", reason=reason)


def session_name(number: int, host: str) -> str:
    """The ``[system]`` of session ``number``: ``CmdSession,N,HOST``."""
    return f"{SESSION},{number},{host}"


def json_line(created: float, system: str, message: str, event: str, level: str,
              fields: dict) -> str:
    """One JSON object: time, level, session and peer (for a session's lines), event,
    the fields of the event, and the message as the text format says it."""
    record: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(created))
        + ".%03d" % (created % 1 * 1000) + time.strftime("%z", time.localtime(created)),
        "level": level, "system": system}
    if system.startswith(SESSION + ","):
        _, number, peer = system.split(",", 2)
        record.update(session=int(number), peer=peer)
    record["event"] = event
    record.update(fields)
    record["message"] = message
    return json.dumps(record, ensure_ascii=False)


_json_lines = False


def use_json_lines(on: bool) -> None:
    """Write JSON objects instead of Twisted-style lines (``--log-format json``)."""
    global _json_lines
    _json_lines = on


def log_connection(host: str) -> None:
    """Log an accepted connection (refused ones included)."""
    log(f"Client connection from {host}", LISTENER, "connect", peer=host)


def log_lost(reason: str, system: str) -> None:
    """Log the end of a session and why (a failed ``auth``: see :func:`log_auth_failure`)."""
    message = f"Lost client connection. Reason: {reason}"
    if reason == AUTH_FAILED:
        log_auth_failure(message, system)
    else:
        log(message, system, "session_end", reason=reason)


def log_auth_failure(message: str, system: str) -> None:
    """Log a session ended by a failed ``auth``, at most once a second per client address.

    Anyone who can connect could otherwise fill the disk guessing; the next
    line that is logged says how many were left out.
    """
    peer = system.rsplit(",", 1)[-1]
    if not _auth_failures.allow(peer):
        if len(_auth_failures_unlogged) > 10000:  # addresses come from clients: bounded
            _auth_failures_unlogged.clear()
        _auth_failures_unlogged[peer] = _auth_failures_unlogged.get(peer, 0) + 1
        return
    fields: dict[str, object] = {"reason": AUTH_FAILED}
    unlogged = _auth_failures_unlogged.pop(peer, 0)
    if unlogged:
        message += f" ({unlogged} more failed from {peer} since the last such line)"
        fields["unlogged"] = unlogged
    log(message, system, "session_end", **fields)


_auth_failures = RateLimit(1.0)
_auth_failures_unlogged: dict[str, int] = {}


def log_request(host: str, line: bytes, system: str) -> None:
    """Log a request line, escaped for a terminal."""
    text = printable(line)  # the caller passes auth's line with the token hidden
    log(f"Cmd received from {host} : {text}", system, "request", request=text)


def internal_error(word: bytes, exc: BaseException, system: str) -> bytes:
    """A command raised what nobody expected: one log line, and the client's error line.

    The session goes on: a bug in one command (ours or a plugin's) must cost
    one request, never the session's other replies.
    """
    name = printable(word)
    log("Command %s failed unexpectedly: %s" % (name, type(exc).__name__), system,
        "command_failed", "error", command=name, error=type(exc).__name__)
    return error("internal error")
