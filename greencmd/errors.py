"""Errors that reach a person as one sentence, and how OS errors are worded."""

from __future__ import annotations

__all__ = ["BindError", "describe_os_error"]


class BindError(Exception):
    """The server could not listen; the message is one sentence for the user."""


def describe_os_error(exc: OSError) -> str:
    """``[Errno 98] Address already in use`` -> ``address already in use``."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
