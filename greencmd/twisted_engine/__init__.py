"""The Twisted twin: greencmd's server as Deferred callback chains, module for module.

Each module has its namesake in ``gevent_engine`` (``server``, ``session``,
``commands``, ``processes``, ``follow``, ``tls``), and ``greencmd compare``
shows them side by side. Twisted is an optional extra: nothing imports it
until this engine is asked for (:func:`load_run`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TWISTED_MISSING", "TwistedMissing", "load_run"]

TWISTED_MISSING = ("the Twisted engine needs Twisted: pip install 'greencmd[twisted]' "
                   "(from a source checkout: pip install '.[twisted]')")


class TwistedMissing(Exception):
    """Twisted is not installed; the message says how to install it."""


def load_run() -> Callable:
    """The twin's ``run(config)``; raises TwistedMissing without Twisted."""
    try:
        import twisted  # noqa: F401
    except ImportError:
        raise TwistedMissing(TWISTED_MISSING) from None
    from .server import run

    return run
