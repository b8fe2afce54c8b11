"""The greencmd wire protocol: framing, request parsing and reply texts. No I/O.

Everything a peer can see on the wire is spelled here once, and imported by the
engines and the client, so the engines can differ only
in how they wait, never in what they answer. docs/protocol.md describes it
for users; the replies keep the original tutorial's spelling
("occured") because scripts parse them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_LINE", "LASTLOG_DEFAULT_LINES",
    "LASTLOG_MAX_LINES", "COMMAND_SYNTAX", "HELP", "COMMAND_NOT_FOUND", "NO_PATH",
    "LINE_TOO_LONG", "TOO_MANY", "IDLE_TIMEOUT", "SHUTTING_DOWN", "ERROR_PREFIX",
    "LineBuffer", "Request", "parse_request", "parse_lastlog_count", "error",
    "hash_reply", "lastlog_reply", "is_error_reply", "ReplyScanner", "printable",
    "BUILTIN_WORDS", "help_reply", "log_lines", "framed", "FollowLines", "FOLLOW_BEGIN",
    "FOLLOW_END", "STATS_BEGIN", "STATS_END", "AUTHENTICATED", "AUTH_FAILED", "AUTH_REQUIRED",
    "loggable", "other_protocol", "other_protocol_start", "Refused",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9999
DEFAULT_MAX_LINE = 8192

LASTLOG_DEFAULT_LINES = 10
LASTLOG_MAX_LINES = 1000

#: Built-in command word -> how ``help`` shows it. Both engines dispatch on these keys.
COMMAND_SYNTAX: dict[bytes, str] = {
    b"lastlog": "lastlog [N]",
    b"follow": "follow [N]",
    b"comhash": "comhash PATH",
    b"stats": "stats",
    b"help": "help",
    b"exit": "exit",
}
#: Words that end the session without a reply.
EXIT_WORDS = frozenset({b"exit", b"quit"})
#: Words no configured or plugin command may take (``auth`` is reserved for auth).
BUILTIN_WORDS = frozenset(COMMAND_SYNTAX) | EXIT_WORDS | {b"auth"}


def help_reply(extra: list[str] | tuple[str, ...] = (), auth: bool = False) -> bytes:
    """The ``help`` line: the built-ins, ``quit``, ``auth TOKEN`` when the server has a
    token, then ``extra`` (configured and plugin commands)."""
    words = [*COMMAND_SYNTAX.values(), "quit", *(["auth TOKEN"] if auth else []), *extra]
    return ("Commands: " + ", ".join(words) + "\n").encode()


HELP = help_reply()
COMMAND_NOT_FOUND = b"Command not found.\n"
NO_PATH = b"please provide a path.\n"
LINE_TOO_LONG = b"Line too long.\n"
TOO_MANY = b"Too many connections, bye!\n"
IDLE_TIMEOUT = b"Idle timeout, bye!\n"
SHUTTING_DOWN = b"Server shutting down, bye!\n"
AUTHENTICATED = b"Authenticated.\n"
AUTH_FAILED = b"Authentication failed.\n"
AUTH_REQUIRED = b"Authentication required.\n"
ERROR_PREFIX = b"An error occured: "
HASH_PREFIX = b"File hash is : "
LASTLOG_BEGIN = b"Begin lastlog\n"
LASTLOG_END = b"End lastlog\n"
FOLLOW_BEGIN = b"Begin follow\n"
FOLLOW_END = b"End follow\n"
STATS_BEGIN = b"Begin stats\n"
STATS_END = b"End stats\n"

#: First lines that make ``greencmd client`` exit 1: the request failed, or was
#: not served (the server said bye instead).
ERROR_REPLIES = (ERROR_PREFIX, COMMAND_NOT_FOUND, NO_PATH, LINE_TOO_LONG, TOO_MANY,
                 SHUTTING_DOWN, IDLE_TIMEOUT, AUTH_FAILED, AUTH_REQUIRED)


class LineBuffer:
    """Split a byte stream into request lines, never holding much more than one line.

    ``feed()`` returns the complete lines in a chunk, without their LF and without
    one CR right before it. Once a line longer than ``max_line`` shows up (complete
    or not), ``too_long`` becomes true, that line and everything after it is
    dropped, and every later ``feed()`` returns nothing: the caller answers the
    lines it got, then ``LINE_TOO_LONG``, then hangs up.
    """

    __slots__ = ("max_line", "too_long", "pending")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self.too_long = False
        #: The unfinished line held (no LF yet), b"" when none.
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the lines they complete, in order."""
        if self.too_long:
            return []
        if self.pending:
            data = self.pending + data
        elif data[-1:] == b"\n" and len(data) <= self.max_line and data.find(b"\r") < 0:
            # The common case, whole short lines without CR: no per-line work.
            # (find, not `in`: CPython's `in` on bytes first tries the operand
            # as an integer, raising and clearing a TypeError: nearly twice find's cost.)
            lines = data.split(b"\n")
            lines.pop()
            return lines
        lines = data.split(b"\n")
        # The last piece is an unfinished line (b"" when data ended with LF).
        self.pending = lines.pop()
        limit = self.max_line
        for index, line in enumerate(lines):
            if line[-1:] == b"\r":
                line = lines[index] = line[:-1]
            if len(line) > limit:
                return self._overflow(lines[:index])
        # One byte of slack: a CR that may yet turn out to precede the LF.
        if len(self.pending) > limit + 1:
            return self._overflow(lines)
        return lines

    def finish(self) -> list[bytes]:
        """At end of input: the last line if it had no LF (the spec counts it)."""
        last, self.pending = self.pending, b""
        if last[-1:] == b"\r":
            last = last[:-1]
        if self.too_long or not last:
            return []
        if len(last) > self.max_line:
            return self._overflow([])
        return [last]

    def _overflow(self, good: list[bytes]) -> list[bytes]:
        self.too_long = True
        self.pending = b""
        return good


class Refused(Exception):
    """A request answered with an error instead of being run; ``reply`` is that error."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(slots=True)
class Request:
    """One parsed request line: the command word in lower case, and its argument.

    A slotted dataclass: a NamedTuple's generated ``__new__`` (a Python call) made it
    cost 1.6 times as much to build, once for every request (docs/performance.md).
    """

    word: bytes
    arg: bytes


def parse_request(line: bytes) -> Request | None:
    """Parse a request line; ``None`` for a blank line, which gets no reply."""
    parts = line.split(None, 1)
    if not parts:
        return None
    arg = parts[1].strip() if len(parts) > 1 else b""
    return Request(parts[0].lower(), arg)


def loggable(request: Request, line: bytes) -> bytes:
    """What the log shows of a request line: never an ``auth`` token."""
    return b"auth ********" if request.word == b"auth" else line


_HTTP_REQUEST = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/\d(\.\d)?")


def other_protocol(request: Request, line: bytes) -> str | None:
    """The protocol ``line`` belongs to if it is not ours (HTTP), else None.

    An HTTP request line (any method) or a ``Host:`` header: a browser that a web
    page tricked into posting to the port. The session must end before the
    body's lines are taken for commands.
    """
    # An HTTP request line has an argument (its target): a line without one, the
    # usual request, is settled by the slice alone.
    if request.word[:5] == b"host:" or request.arg and b"HTTP/" in request.arg and (
            _HTTP_REQUEST.fullmatch(line.strip())):
        return "HTTP"
    return None


def other_protocol_start(data: bytes) -> str | None:
    """The protocol a connection's first bytes belong to if not ours (TLS), else None."""
    return "TLS" if data[:2] == b"\x16\x03" else None


def parse_lastlog_count(arg: bytes, command: str = "lastlog") -> int:
    """The N of ``lastlog [N]`` or ``follow [N]``. Raises ValueError with the reply's message."""
    if not arg:
        return LASTLOG_DEFAULT_LINES
    # isdigit() on bytes is ASCII-only, so int() never sees "+5", " 5" or "٥";
    # the length check keeps it from a 5,000-digit string (and Python's own limit).
    digits = arg.lstrip(b"0")
    if arg.isdigit() and len(digits) <= 4 and 1 <= int(digits or b"0") <= LASTLOG_MAX_LINES:
        return int(digits)
    raise ValueError("%s takes a line count from 1 to %d" % (command, LASTLOG_MAX_LINES))


def error(message: str) -> bytes:
    """The one-line error reply of a known command."""
    # surrogateescape gives a client back the exact bytes of a path it sent.
    text = " ".join(message.splitlines())
    return ERROR_PREFIX + text.encode("utf-8", "surrogateescape") + b"\n"


def hash_reply(hexdigest: str) -> bytes:
    """The reply to a successful ``comhash``."""
    return HASH_PREFIX + hexdigest.encode("ascii") + b"\n"


def lastlog_reply(output: bytes) -> bytes:
    """Frame ``tail`` output as the ``lastlog`` reply, leaving out ``==`` lines."""
    return LASTLOG_BEGIN + log_lines(output) + LASTLOG_END


def log_lines(output: bytes) -> bytes:
    """Log text as lastlog and follow send it: ``==`` lines left out, each line ending in LF."""
    if not output.startswith(b"==") and b"\n==" not in output:  # the usual case: as it is
        return output + b"\n" if output and not output.endswith(b"\n") else output
    lines = output.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\n" for line in lines if not line.startswith(b"=="))


def framed(name: str, body: bytes) -> bytes:
    """``Begin NAME``, ``body`` (a last line without LF gets one), ``End NAME``."""
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return b"Begin %s\n%s" % (name.encode(), body) + b"End %s\n" % name.encode()


class FollowLines:
    """Cuts a followed log's output into the lines ``follow`` sends, as they complete.

    ``==`` lines are left out, as lastlog does. A line is held until its LF
    arrives, but never more than :data:`HOLD` bytes of it: past that, it is
    passed on (or dropped, if it is an ``==`` line) as it comes, so a log line
    of a gigabyte does not grow memory.
    """

    __slots__ = ("_held", "_long")

    HOLD = 65536

    def __init__(self) -> None:
        self._held = b""
        #: In an over-long line: True while passing it on, False while dropping it.
        self._long: bool | None = None

    def feed(self, data: bytes) -> bytes:
        """The complete lines in ``data`` (with what was held), ready to send."""
        out = b""
        if self._long is not None:
            end = data.find(b"\n")
            rest = data if end < 0 else data[:end + 1]
            out = rest if self._long else b""
            if end < 0:
                return out
            data, self._long = data[end + 1:], None
        data = self._held + data
        cut = data.rfind(b"\n") + 1
        if cut:
            out += log_lines(data[:cut])
        self._held = data[cut:]
        if len(self._held) > self.HOLD:
            self._long = not self._held.startswith(b"==")
            out += self._held if self._long else b""
            self._held = b""
        return out

    def finish(self) -> bytes:
        """At the end of the follow: the last, unfinished line, with an LF."""
        held, self._held = self._held, b""
        if self._long:
            return b"\n"
        return log_lines(held)


#: How much of an unfinished line ReplyScanner keeps: more than any reply's first words.
_LINE_START = 256


class ReplyScanner:
    """Reads a stream of replies and notes whether any of them was an error reply.

    A framed reply (``Begin X`` ... ``End X``) is skipped whole, so a log line in
    a ``lastlog`` body that happens to read like an error is not taken for one.
    """

    __slots__ = ("failed", "received", "_pending", "_block_end")

    def __init__(self) -> None:
        self.failed = False
        self.received = False
        self._pending = b""
        self._block_end: bytes | None = None

    @property
    def cut(self) -> bool:
        """True when the stream so far stops inside a reply: a line without its newline,
        or a framed reply without its ``End`` line (a server that closes now cut it)."""
        return bool(self._pending) or self._block_end is not None

    def feed(self, data: bytes) -> None:
        """Scan more of the stream."""
        self.received = self.received or bool(data)
        lines = (self._pending + data).split(b"\n")
        # Only a line's start is looked at: a line that never ends (a broken server)
        # must not be kept whole.
        self._pending = lines.pop()[:_LINE_START]
        for line in lines:
            if self._block_end is not None:
                if line == self._block_end:
                    self._block_end = None
            elif line.startswith(b"Begin "):
                self._block_end = b"End " + line[len(b"Begin "):]
            elif is_error_reply(line + b"\n"):
                self.failed = True


def is_error_reply(first_line: bytes) -> bool:
    """True when a reply's first line says the request failed (client exit 1)."""
    return first_line.startswith(ERROR_REPLIES)


def decode_path(arg: bytes) -> str:
    """A request's path argument as the OS would take it (``os.fsdecode``)."""
    return os.fsdecode(arg)


def printable(data: bytes) -> str:
    """Text for a log line: undecodable bytes and control characters escaped."""
    text = data.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return "\\x%02x" % code
    return "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code
