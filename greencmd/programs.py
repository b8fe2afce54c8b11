"""Commands of your own, for both engines: programs from the config file, and plugins.

A configured command (``[commands.NAME]`` in the ``--config`` file, docs/protocol.md)
runs a fixed program: the client chooses at most its trailing arguments, never
the program, never a shell, and never an option (a word starting with ``-`` is
refused before anything runs). A plugin command is a Python function
``(arg: str) -> str`` that a package registers in the ``greencmd.commands``
entry-point group.

Everything here is engine-neutral: what to run, and what to answer. How to wait
for it is each engine's business (``greencmd.commands`` and the Twisted twin).
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NamedTuple

from . import protocol
from .jobs import Refused
from .logs import log

__all__ = ["ProgramCommand", "PluginCommand", "Extras", "command_from_table", "load_extras",
           "load_plugins", "call_plugin", "check_name", "timed_out", "OUTPUT_LIMIT",
           "ENTRY_POINT_GROUP"]

#: Most standard output a configured command's reply may carry.
OUTPUT_LIMIT = 4 << 20
ENTRY_POINT_GROUP = "greencmd.commands"
NAME = re.compile(r"[A-Za-z0-9_-]+")
ARGS_MODES = ("none", "append")


def check_name(name: str) -> str | None:
    """What is wrong with ``name`` as a command word, or None."""
    if not NAME.fullmatch(name):
        return "a command name may hold only letters, digits, '-' and '_'"
    if name.lower().encode() in protocol.BUILTIN_WORDS:
        return "%r is a built-in command" % name
    return None


@dataclass(frozen=True)
class ProgramCommand:
    """A ``[commands.NAME]`` table: the program, how it takes arguments, its help."""

    name: str
    run: tuple[str, ...]
    args: str = "none"
    help: str = ""

    @property
    def word(self) -> bytes:
        """The request word that runs it (any case matches)."""
        return self.name.lower().encode()

    @property
    def syntax(self) -> str:
        """How ``help`` shows it."""
        return self.help or self.name

    def argv(self, arg: bytes) -> list[str]:
        """The argv to run for a request's argument; raises :class:`Refused`."""
        if self.args == "none":
            if arg:
                raise Refused(protocol.error("%s takes no arguments" % self.name))
            return list(self.run)
        words = arg.split()
        if any(word.startswith(b"-") for word in words):
            raise Refused(protocol.error("%s: arguments may not start with '-'" % self.name))
        return [*self.run, *map(os.fsdecode, words)]

    def reply(self, status: int, output: bytes, errors: bytes) -> bytes:
        """The reply once the program ended: its output framed, or an error line."""
        if status == 0:
            return protocol.framed(self.name, output)
        how = ("was killed by signal %d" % -status if status < 0
               else "exited with status %d" % status)
        why = last_line(errors) or last_line(output)
        return protocol.error("%s %s%s" % (self.name, how, ": " + why if why else ""))

    def cannot_run(self, exc: OSError) -> bytes:
        """The reply when the program cannot be started."""
        return protocol.error("cannot run %s: %s" % (self.name, exc))

    def too_much(self) -> bytes:
        """The reply when it printed more than :data:`OUTPUT_LIMIT`."""
        return protocol.error("%s printed over %d MiB; stopped" % (self.name, OUTPUT_LIMIT >> 20))


def timed_out(name: str, seconds: float) -> bytes:
    """The reply when a configured or plugin command ran past ``--command-timeout``."""
    return protocol.error("%s did not finish within %g seconds; stopped" % (name, seconds))


def last_line(data: bytes) -> str:
    """The last non-blank line of a program's output, as text."""
    lines = data.decode("utf-8", "backslashreplace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def command_from_table(name: str, table: object) -> ProgramCommand:
    """A ``[commands.NAME]`` table as a command; raises ValueError naming the bad key."""
    problem = check_name(name)
    if problem:
        raise ValueError(problem)
    if not isinstance(table, dict):
        raise ValueError("must be a table")
    unknown = sorted(set(table) - {"run", "args", "help"})
    if unknown:
        raise ValueError("unknown key %r (allowed: run, args, help)" % unknown[0])
    run = table.get("run")
    if (not isinstance(run, list) or not run
            or not all(isinstance(word, str) and word for word in run)):
        raise ValueError("'run' must be a non-empty list of non-empty strings, "
                         "the program and its arguments")
    args = table.get("args", "none")
    if args not in ARGS_MODES:
        raise ValueError("'args' must be \"none\" or \"append\", not %r" % (args,))
    help_text = table.get("help", "")
    if not isinstance(help_text, str) or "\n" in help_text:
        raise ValueError("'help' must be one line of text")
    return ProgramCommand(name, tuple(run), args, help_text)


@dataclass(frozen=True)
class PluginCommand:
    """A function from the ``greencmd.commands`` entry-point group."""

    name: str
    function: Callable[[str], str]
    origin: str  # "module:function", for the log

    @property
    def word(self) -> bytes:
        """The request word that runs it (any case matches)."""
        return self.name.lower().encode()

    def call(self, arg: bytes) -> bytes:
        """Call the function with the request's argument and return its reply.

        Raises what the function raises; :func:`call_plugin` makes that a reply.
        """
        reply = self.function(os.fsdecode(arg))
        if not isinstance(reply, str):
            raise TypeError("%s returned %s, not a string" % (self.origin,
                                                             type(reply).__name__))
        data = reply.encode("utf-8", "surrogateescape")
        return data if data.endswith(b"\n") else data + b"\n"

    def failed(self, exc: BaseException, trace: str, system: str) -> bytes:
        """Log ``exc`` once with its traceback ``trace``; the error line for the client."""
        log("Command %s (%s) failed:" % (self.name, self.origin), system)
        for line in trace.rstrip("\n").split("\n"):
            log("\t" + line, system)
        return protocol.error(str(exc) or type(exc).__name__)


def call_plugin(plugin: PluginCommand, arg: bytes, system: str) -> bytes:
    """The reply of a plugin command; an exception becomes the error line (and a log entry)."""
    try:
        return plugin.call(arg)
    except Exception as exc:
        return plugin.failed(exc, traceback.format_exc(), system)


def load_plugins(taken: set[bytes]) -> list[PluginCommand]:
    """The installed plugin commands; one that cannot be used is logged and left out.

    ``taken``: words already in use (built-ins and configured commands), which a
    plugin may not take. A plugin whose import fails does not stop the server:
    the log says which one and why, and its name gets ``Command not found.``
    """
    plugins = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name.lower()):
        problem = check_name(entry.name)
        if problem is None and entry.name.lower().encode() in taken:
            problem = "a configured command or another plugin has that name"
        if problem is None:
            try:
                function = entry.load()
            except Exception as exc:  # the plugin's own import may raise anything
                problem = "cannot load %s: %s: %s" % (entry.value, type(exc).__name__, exc)
            else:
                if not callable(function):
                    problem = "%s is not a function" % entry.value
        if problem:
            log("Plugin command %s left out: %s" % (entry.name, problem))
            continue
        plugin = PluginCommand(entry.name, function, entry.value)
        taken.add(plugin.word)
        plugins.append(plugin)
        log("Plugin command %s from %s" % (plugin.name, plugin.origin))
    return plugins


class Extras(NamedTuple):
    """The commands a server has beyond the built-ins: configured ones, then plugins."""

    programs: tuple[ProgramCommand, ...]
    plugins: list[PluginCommand]

    def help(self) -> bytes:
        """The ``help`` line: built-ins, configured commands (their help), plugins (names)."""
        return protocol.help_reply([*(spec.syntax for spec in self.programs),
                                    *(extra.name for extra in self.plugins)])

    def names(self) -> dict[bytes, str]:
        """Every command word that ``stats`` counts, with its name."""
        names = {word: word.decode() for word in protocol.COMMAND_SYNTAX if word != b"exit"}
        names[b"auth"] = "auth"
        for command in (*self.programs, *self.plugins):
            names[command.word] = command.name
        return names


def load_extras(programs: tuple[ProgramCommand, ...]) -> Extras:
    """The configured commands, and the plugins that can be loaded beside them."""
    return Extras(programs, load_plugins(set(protocol.BUILTIN_WORDS)
                                         | {spec.word for spec in programs}))
