"""The comparison module: greencmd's server written the Twisted way, side by side.

``twisted_server`` is the runnable twin (``greencmd serve --engine twisted``),
``getpage`` the tutorial's getPage lessons written both ways, and ``pairs`` the
table ``greencmd compare`` prints from. Twisted is an optional extra: nothing
imports it until the twin is asked for.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TWISTED_MISSING", "TwistedMissing", "load_twisted_server"]

TWISTED_MISSING = ("the Twisted engine needs Twisted: pip install 'greencmd[twisted]' "
                   "(from a source checkout: pip install '.[twisted]')")


class TwistedMissing(Exception):
    """Twisted is not installed; the message says how to install it."""


def require_twisted() -> None:
    """Raise :class:`TwistedMissing` unless Twisted can be imported."""
    try:
        import twisted  # noqa: F401
    except ImportError:
        raise TwistedMissing(TWISTED_MISSING) from None


def load_twisted_server() -> Callable:
    """The twin's ``run(config)``; raises TwistedMissing without Twisted."""
    require_twisted()
    from .twisted_server import run

    return run
