"""Errors that reach a person as one sentence, and how OS errors are worded."""

from __future__ import annotations

import errno
import os

__all__ = ["BindError", "cannot_listen", "describe_os_error", "duration", "OUT_OF_DESCRIPTORS",
           "EXHAUSTED_PAUSE"]

#: accept() errors that mean "out of descriptors or memory for now", not a bug.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How long accepting pauses after such an error (open sessions go on meanwhile).
EXHAUSTED_PAUSE = 0.1


class BindError(Exception):
    """The server could not listen; the message is one sentence for the user."""


def describe_os_error(exc: OSError) -> str:
    """``[Errno 98] Address already in use`` -> ``address already in use``."""
    # The system's own words: gevent and socket.create_server() append the
    # address to .strerror. getaddrinfo's errors have a negative errno.
    if isinstance(exc.errno, int) and exc.errno > 0:
        text = os.strerror(exc.errno)
    else:
        text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else None
        text = text or exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def cannot_listen(address: str, exc: OSError) -> BindError:
    """The error for a server that cannot bind ``address`` (``host:port``)."""
    return BindError("cannot listen on %s: %s" % (address, describe_os_error(exc)))


def duration(count: float) -> str:
    """``1 second``, ``2.5 seconds``: a duration as a sentence says it."""
    return "%g second%s" % (count, "" if count == 1 else "s")
