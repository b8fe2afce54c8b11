"""The figures ``stats`` reports, for both engines, kept as plain counters.

Counting costs one dict increment per answered request (measured in
docs/performance.md): the session loop calls :meth:`Stats.served` with the
request's word, and only words of real commands get a ``command_<name>`` line,
so a client cannot grow the table by inventing words.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection

from .. import __version__
from . import protocol

__all__ = ["Stats", "parse_reply"]


class Stats:
    """Counters of one server process; ``reply()`` is the ``stats`` reply."""

    __slots__ = ("engine", "sessions_max", "started", "sessions", "accepted", "refused",
                 "unknown", "commands", "labels", "names")

    def __init__(self, engine: str, sessions_max: int, names: dict[bytes, str],
                 sessions: Collection) -> None:
        self.engine = engine
        self.sessions_max = sessions_max
        self.started = time.monotonic()
        #: The server's own set of open sessions (each with ``following``, the tail
        #: of a follow or None): what is open now is read from it, not counted.
        self.sessions = sessions
        self.accepted = 0
        self.refused = 0
        self.unknown = 0  # requests answered "Command not found."
        #: Command word -> its label (``df``, ``my_tool``); every known command.
        self.labels = {word: name.lower().replace("-", "_") for word, name in names.items()}
        #: Command word -> its figure's name in the ``stats`` reply.
        self.names = {word: "command_" + label for word, label in self.labels.items()}
        self.commands = dict.fromkeys(self.names, 0)

    @property
    def sessions_open(self) -> int:
        """Sessions open now."""
        return len(self.sessions)

    @property
    def follows_open(self) -> int:
        """Follows streaming now."""
        return sum(s.following is not None for s in self.sessions)

    def served(self, word: bytes) -> None:
        """Count one answered request."""
        if word in self.commands:
            self.commands[word] += 1
        else:
            self.unknown += 1

    def reply(self) -> bytes:
        """``Begin stats``, one ``name value`` line per figure, ``End stats``."""
        figures = [
            ("version", __version__),
            ("engine", self.engine),
            ("pid", os.getpid()),
            ("uptime_seconds", "%.1f" % (time.monotonic() - self.started)),
            ("sessions_open", self.sessions_open),
            ("sessions_max", self.sessions_max),
            ("sessions_accepted", self.accepted),
            ("sessions_refused", self.refused),
            ("follows_open", self.follows_open),
            ("commands_served", sum(self.commands.values()) + self.unknown),
            ("commands_unknown", self.unknown),
        ]
        figures += [(self.names[word], count) for word, count in self.commands.items() if count]
        body = "".join("%s %s\n" % figure for figure in figures)
        return protocol.STATS_BEGIN + body.encode() + protocol.STATS_END


def parse_reply(reply: bytes) -> dict[str, int | float | str] | None:
    """The figures of a ``stats`` reply, as numbers where they are; None if it is not one."""
    lines = reply.decode("utf-8", "replace").splitlines()
    if lines[:1] != [protocol.STATS_BEGIN.decode().strip()] or \
            lines[-1:] != [protocol.STATS_END.decode().strip()]:
        return None
    figures: dict[str, int | float | str] = {}
    for line in lines[1:-1]:
        name, _, value = line.partition(" ")
        for kind in (int, float):
            try:
                figures[name] = kind(value)
                break
            except ValueError:
                continue
        else:
            figures[name] = value
    return figures
