"""``greencmd client`` with many servers: the same request to all of them at once.

A gevent program written as blocking code: one greenlet per server runs
:func:`ask` (connect, send, read the reply, each step bounded by ``--timeout``),
a ``Pool`` keeps ``--parallel`` of them running, and the main greenlet prints
each server's reply as one block when it is complete. So the request to 500
servers takes about as long as the slowest one, not the sum of them.
``follow`` is the exception: its lines are printed as they arrive, each with its
server's name, until Ctrl-C stops every follow cleanly.
"""

from __future__ import annotations

import json
import signal
import ssl
import sys
import time
from typing import BinaryIO, NamedTuple, TextIO

import gevent
import gevent.ssl
from gevent import socket
from gevent.event import Event
from gevent.pool import Pool

from ..core import protocol
from ..core.auth import read_token_file
from ..core.errors import describe_os_error, duration
from ..core.stats import parse_reply
from ..core.tls import (
    TLS_RESET,
    client_context,
    client_tls_failure,
    describe_tls_error,
    is_tls,
    no_reply,
)
from .gather import Gathered
from .hosts import Target
from .single import (
    CUT_SHORT,
    FAILED,
    OK,
    RECV_SIZE,
    UNREACHABLE,
    Refused,
    authenticate,
    no_more_requests,
)

__all__ = ["Outcome", "Profile", "profiles", "ask", "run"]


class Outcome(NamedTuple):
    """What one server answered: exit status as the one-server client would have it."""

    target: Target
    exit: int
    reply: bytes
    error: str | None
    seconds: float


class Profile(NamedTuple):
    """How one server is asked: its TLS context (or None), its token (or None), its timeout."""

    tls: ssl.SSLContext | None
    token: bytes | None
    timeout: float


def profiles(found: list[Target], tls_files: tuple | None, token: bytes | None,
             timeout: float) -> dict[Target, Profile]:
    """Each server's profile: its hosts-file settings over the command line's.

    ``tls_files``: (cafile, cert, key) from the command line, or None for no TLS.
    Raises ValueError naming a file that cannot be used.
    """
    contexts: dict[tuple, ssl.SSLContext] = {}
    tokens: dict[str, bytes] = {}
    chosen = {}
    for target in found:
        own = dict(target.settings)
        files = tls_files
        wants_tls = own.get("tls", "").lower()
        if wants_tls in ("true", "yes") or {"cafile", "cert", "key"} & set(own):
            base = tls_files or (None, None, None)
            files = (own.get("cafile", base[0]), own.get("cert", base[1]),
                     own.get("key", base[2]))
        if wants_tls in ("false", "no"):
            files = None
        context = None
        if files is not None:
            if files not in contexts:
                try:  # a context whose sockets wait cooperatively
                    contexts[files] = client_context(*files, ssl_module=gevent.ssl)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError("%s: cannot load %s: %s" % (
                        target.label, " / ".join(f for f in files if f),
                        describe_tls_error(exc))) from None
            context = contexts[files]
        path = own.get("token-file")
        if path is not None and path not in tokens:
            tokens[path] = read_token_file(path)
        chosen[target] = Profile(context, tokens[path] if path else token,
                                 float(own.get("timeout", timeout)))
    return chosen


#: Most of one server's reply kept (a reply is printed, or gathered, once it is whole):
#: far above any greencmd reply (lastlog and configured commands stop at 4 MiB).
REPLY_LIMIT = 64 << 20
TOO_LONG = "sent over %d MiB without ending its reply; stopped" % (REPLY_LIMIT >> 20)


def ask(target: Target, line: bytes, profile: Profile, on_line=None,
        stop: Event | None = None) -> Outcome:
    """Send ``line`` to one server and read its whole reply; never raises.

    ``stop`` (follow): the request is not half-closed; once ``stop`` is set, the
    stop line is sent. ``on_line``, if given, gets each line as it arrives.
    """
    tls, token, timeout = profile
    started = time.monotonic()
    replies = protocol.ReplyScanner()
    received: list[bytes] = []
    sock = None
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=target.host)
        if token is not None:
            authenticate(sock, token)
        sock.sendall(line + b"\n")
        if stop is None:
            no_more_requests(sock)
            size = 0
            while data := sock.recv(RECV_SIZE):
                replies.feed(data)
                received.append(data)
                size += len(data)
                if size > REPLY_LIMIT:  # kept whole until the end: a stream must not be
                    return _failed(target, [], TOO_LONG, started)  # nor printed
        else:
            _stream(sock, on_line, stop, timeout, replies, received)
    except TimeoutError:
        return _failed(target, received, "no reply within %s" % duration(timeout), started)
    except ssl.SSLError as exc:
        if isinstance(exc, ssl.SSLEOFError) and is_tls(sock) and not received:
            return _failed(target, received, no_reply(True), started)  # after the handshake
        return _failed(target, received, "TLS failed: %s" % client_tls_failure(exc), started)
    except Refused as exc:
        return Outcome(target, FAILED, b"".join(received), str(exc) or "no reply to auth",
                       _since(started))
    except OSError as exc:
        if sock is not None and tls is not None and not is_tls(sock):  # in the handshake
            return _failed(target, received, "TLS failed: %s" % client_tls_failure(exc),
                           started)
        reset = isinstance(exc, (ConnectionResetError, BrokenPipeError))
        why = TLS_RESET if reset and is_tls(sock) and not received else describe_os_error(exc)
        return _failed(target, received, why, started)
    finally:
        if sock is not None:
            sock.close()
    reply = b"".join(received)
    if not replies.received:
        return _failed(target, received, no_reply(tls is not None), started)
    if replies.cut:
        return _failed(target, received, CUT_SHORT, started)
    return Outcome(target, FAILED if replies.failed else OK, reply, None, _since(started))


def _stream(sock, on_line, stop: Event, timeout: float, replies, received) -> None:
    """Follow: hand on each line as it comes; when ``stop`` is set, send the stop line."""
    stopper = gevent.spawn(_stop_when_set, sock, stop)
    try:
        sock.settimeout(None)
        pending = b""
        began = True
        while data := sock.recv(RECV_SIZE):
            replies.feed(data)
            if replies.failed and began:  # no follow began: let the server close
                began = False
                sock.settimeout(timeout)
                no_more_requests(sock)
            if on_line is None:  # --json: the whole follow is one reply, printed at its end
                received.append(data)
                continue
            # Printed as it comes, and not kept: a follow may run for days.
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                on_line(line)
            # A log line of a gigabyte is not held whole: past what the server holds of
            # one line, what came of it is printed as a line of its own.
            if len(pending) > protocol.FollowLines.HOLD:
                on_line(pending)
                pending = b""
        if pending:
            on_line(pending)
    finally:
        stopper.kill()


def _stop_when_set(sock: socket.socket, stop: Event) -> None:
    stop.wait()
    try:
        sock.sendall(b"\n")  # the stop line
        no_more_requests(sock)  # then the server closes
    except OSError:
        pass


def _failed(target: Target, received: list[bytes], error: str, started: float) -> Outcome:
    return Outcome(target, UNREACHABLE, b"".join(received), error, _since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def run(found: dict[Target, Profile], line: bytes, parallel: int, out: BinaryIO, err: TextIO,
        as_json: bool, gather: bool = False) -> int:
    """Ask every server, print each reply as it completes; return the exit status.

    ``found``: each server and how to ask it (:func:`profiles`). ``gather``: print
    each distinct reply once, at the end (:mod:`.gather`).
    A ``follow`` runs on every server at once (``parallel`` does not hold back
    the rest until the first ones are stopped), until SIGINT or SIGTERM.
    """
    follow = protocol.parse_request(line).word == b"follow"
    stop = Event()
    handlers = [gevent.signal_handler(signum, stop.set)
                for signum in (signal.SIGINT, signal.SIGTERM)] if follow else []

    waiting: dict[Target, float] = {}  # asked, not answered yet: since when

    def ask_one(target: Target) -> Outcome:
        on_line = _line_printer(out, target.label) if follow and not as_json else None
        waiting[target] = time.monotonic()
        try:
            return ask(target, line, found[target], on_line, stop if follow else None)
        finally:
            del waiting[target]

    outcomes: list[Outcome] = []  # for the summary: without their replies, once printed
    gathered = Gathered() if gather else None
    show = not follow and len(found) > GLANCE and _is_terminal(err)
    progress = gevent.spawn(_show_progress, err, len(found), outcomes, waiting) if show else None
    try:
        pool = Pool(len(found) if follow else parallel)
        for outcome in pool.imap_unordered(ask_one, found):
            if gathered is not None:
                gathered.add(outcome)
            else:
                _report(outcome, out, streamed=follow and not as_json, as_json=as_json)
            # A thousand servers' replies are not kept to the end: printed, or gathered.
            outcomes.append(outcome._replace(reply=b""))
    finally:
        for handler in handlers:
            handler.cancel()
        if progress is not None:
            progress.kill()
            err.write("\r\x1b[K")  # the progress line goes before the summary comes
    if gathered is not None:
        gathered.print(out)
    _summary(outcomes, err)
    if any(o.exit == UNREACHABLE for o in outcomes):
        return UNREACHABLE
    return FAILED if any(o.exit == FAILED for o in outcomes) else OK


#: More servers than one glance takes in: then a terminal gets a progress line.
GLANCE = 20
PROGRESS_EVERY = 0.2


def _is_terminal(err: TextIO) -> bool:
    try:
        return err.isatty()
    except (AttributeError, ValueError):
        return False


def _show_progress(err: TextIO, total: int, outcomes: list[Outcome],
                   waiting: dict[Target, float]) -> None:
    """Rewrite one line of ``err``: answered of total, errors so far, the longest wait."""
    while True:
        gevent.sleep(PROGRESS_EVERY)
        failed = sum(o.exit != OK for o in outcomes)
        text = "answered %d of %d, %d with errors" % (len(outcomes), total, failed)
        if waiting:
            target, since = min(waiting.items(), key=lambda item: item[1])
            text += "; waiting longest for %s (%.1f s)" % (target.label,
                                                          time.monotonic() - since)
        err.write("\r" + text + "\x1b[K")
        err.flush()


def _line_printer(out: BinaryIO, label: str):
    """Follow: print one server's line as it arrives, with its name."""
    return lambda line: _print_lines(out, label, [line])


def _report(outcome: Outcome, out: BinaryIO, streamed: bool, as_json: bool) -> None:
    """Print one server's outcome: its block of lines (or its JSON object)."""
    target = outcome.target
    if as_json:
        record = {"host": target.host, "port": target.port, "exit": outcome.exit,
                  "reply": outcome.reply.decode("utf-8", "backslashreplace"),
                  "error": outcome.error, "seconds": outcome.seconds}
        figures = parse_reply(outcome.reply)
        if figures is not None:  # stats: the figures as an object too (as HAProxy's json)
            record["stats"] = figures
        out.write(json.dumps(record).encode() + b"\n")
    else:
        if not streamed:
            lines = outcome.reply.split(b"\n")
            _print_lines(out, target.label, lines[:-1] if lines[-1] == b"" else lines)
        if outcome.error:
            _print_lines(out, target.label, [b"error: " + outcome.error.encode()])
    out.flush()


def _print_lines(out: BinaryIO, label: str, lines: list[bytes]) -> None:
    prefix = label.encode() + b": "
    out.write(b"".join(prefix + line + b"\n" for line in lines))
    out.flush()


def _summary(outcomes: list[Outcome], err: TextIO) -> None:
    counts = [sum(o.exit == status for o in outcomes) for status in (OK, FAILED, UNREACHABLE)]
    print("%d %s: %d ok, %d error %s, %d unreachable" % (
        len(outcomes), plural(len(outcomes), "server"), counts[0], counts[1],
        plural(counts[1], "reply", "replies"), counts[2]), file=err or sys.stderr)


def plural(count: int, one: str, many: str | None = None) -> str:
    """``one`` for 1, else ``many`` (default: ``one`` + s)."""
    return one if count == 1 else many or one + "s"
