"""What both versions of the getPage lessons print, worded once."""

from __future__ import annotations

__all__ = ["page_error"]


def page_error(status: int, reason: str, url: str) -> str:
    """The line both engines print for a page that could not be fetched."""
    return "Could not get %s: %d %s" % (url, status, reason)
