"""The tutorial's getPage lessons the Twisted way: Agent, readBody and callbacks.

``getPage`` is gone from current Twisted; ``Agent.request`` + ``readBody`` is
its replacement, and ``get_page`` below rebuilds it, so each lesson reads as in
the tutorial: ``d = get_page(url)``, then ``d.addCallback(...)``.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor
from twisted.internet.task import react
from twisted.web.client import Agent, readBody

from .lesson_text import page_error

__all__ = ["PageError", "get_page", "print_page", "lower_page", "missing_page", "run"]


class PageError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


def get_page(url: str) -> defer.Deferred:
    """A Deferred that fires with the page's bytes, or fails with PageError."""
    d = Agent(reactor).request(b"GET", url.encode())
    d.addCallback(_body_or_error)
    return d


def _body_or_error(response) -> defer.Deferred:
    d = readBody(response)
    if response.code >= 400:
        # Read the body anyway, so the connection is released, then fail.
        d.addCallback(lambda _: _raise(PageError(response.code, response.phrase.decode())))
    return d


def _raise(exc: Exception):
    raise exc


def _print(page: bytes) -> None:
    print(page.decode())


def print_page(url: str) -> defer.Deferred:
    """Lesson 1: one callback."""
    d = get_page(url)
    d.addCallback(_print)
    return d


def lower_page(url: str) -> defer.Deferred:
    """Lesson 2: two chained callbacks; each gets what the one before returned."""
    d = get_page(url)
    d.addCallback(lambda page: page.lower())
    d.addCallback(_print)
    return d


def missing_page(url: str) -> defer.Deferred:
    """Lesson 3: an errback catches the failure the callback never sees."""

    def report(failure) -> None:
        failure.trap(PageError)
        print(page_error(failure.value.status, failure.value.reason, url))

    d = get_page(url)
    d.addCallback(_print)
    d.addErrback(report)
    return d


LESSONS = {"print": print_page, "lower": lower_page, "missing": missing_page}


def run(lesson: str, url: str) -> int:
    """Run a lesson under the reactor; 0, or 1 if it failed."""
    status = []

    def main(_reactor) -> defer.Deferred:
        d = LESSONS[lesson](url)
        d.addErrback(lambda failure: status.append(failure.getErrorMessage()))
        return d

    try:
        react(main)
    except SystemExit as exc:
        if exc.code:
            return int(exc.code)
    if status:
        print("getpage: %s" % status[0], file=sys.stderr)
        return 1
    return 0
