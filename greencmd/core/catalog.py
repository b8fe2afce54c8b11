"""Every command a server answers, and the dispatch table each engine builds from it.

The built-in words live in :mod:`protocol`; a server adds its configured
commands and the plugins that load. :class:`Catalog` holds those, words the
``help`` line and names the ``stats`` figures; :func:`dispatch_table` gives an
engine its ``word -> function`` table, so no engine spells the wiring again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from . import protocol
from .plugins import PluginCommand, load_plugins
from .programs import ProgramCommand

__all__ = ["Catalog", "load_catalog", "dispatch_table"]

Handler = TypeVar("Handler")


class Catalog(NamedTuple):
    """The commands a server has beyond the built-ins: configured ones, then plugins."""

    programs: tuple[ProgramCommand, ...]
    plugins: list[PluginCommand]

    def help(self, auth: bool = False) -> bytes:
        """The ``help`` line: built-ins (``auth`` too when the server has a token),
        configured commands and plugins (their syntax, where they give one)."""
        return protocol.help_reply([*(spec.syntax for spec in self.programs),
                                    *(extra.syntax for extra in self.plugins)], auth)

    def names(self) -> dict[bytes, str]:
        """Every command word that ``stats`` counts, with its name."""
        names = {word: word.decode() for word in protocol.COMMAND_SYNTAX if word != b"exit"}
        names[b"auth"] = "auth"
        for command in (*self.programs, *self.plugins):
            names[command.word] = command.name
        return names


def load_catalog(programs: tuple[ProgramCommand, ...]) -> Catalog:
    """The configured commands, and the plugins that can be loaded beside them."""
    return Catalog(programs, load_plugins(set(protocol.BUILTIN_WORDS)
                                          | {spec.word for spec in programs}))


def dispatch_table(builtins: Mapping[bytes, Handler], catalog: Catalog,
                   program: Callable[[ProgramCommand], Handler],
                   plugin: Callable[[PluginCommand], Handler]) -> dict[bytes, Handler]:
    """``word -> handler``: the built-ins, then ``program(spec)`` and ``plugin(extra)``."""
    table = dict(builtins)
    table.update((spec.word, program(spec)) for spec in catalog.programs)
    table.update((extra.word, plugin(extra)) for extra in catalog.plugins)
    return table
