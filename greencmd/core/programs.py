"""Configured commands (``[commands.NAME]`` in the ``--config`` file): what runs, what it answers.

A configured command runs a fixed program: the client chooses at most its
trailing arguments, never the program, never a shell, and never an option (a
word starting with ``-`` is refused before anything runs). How a child is
started and awaited is each engine's business (its ``processes`` module); what
it may run and how its end is worded is decided here, once.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import NamedTuple

from . import protocol
from .errors import duration
from .protocol import Refused

__all__ = ["ProgramCommand", "command_from_table", "check_name", "timed_out", "last_line",
           "OUTPUT_LIMIT", "STDERR_KEPT", "AT_ONCE", "Finished", "TimedOut", "TooMuchOutput",
           "kill_process_group", "OWN_GROUP"]

#: Most standard output a configured command's reply may carry.
OUTPUT_LIMIT = 4 << 20
#: How much of a child's stderr is kept: enough for its last line.
STDERR_KEPT = 4096
#: Children that run to their end (lastlog, configured commands) at once, in every
#: engine; more wait their turn, so a storm of requests cannot fork the machine to a crawl.
AT_ONCE = max(4, 2 * (os.cpu_count() or 1))
NAME = re.compile(r"[A-Za-z0-9_-]+")
ARGS_MODES = ("none", "append")


#: How the gevent and asyncio engines start a child in a process group of its own
#: (``Popen`` arguments), so that one ``killpg`` reaches all it starts. Not a
#: session (``start_new_session``): on Linux with scheduler autogroups (most
#: distributions' default) every new session also gets an autogroup of its own,
#: which cost the server about 50 µs of CPU per child here, a fifth of a
#: ``lastlog`` (docs/performance.md, tenth pass). Python 3.10 has only the session.
OWN_GROUP: dict[str, object] = ({"process_group": 0} if sys.version_info >= (3, 11)
                                else {"start_new_session": True})


def kill_process_group(pid: int) -> None:
    """SIGKILL every process in the process group that child ``pid`` leads; never raises.

    Every engine starts its children in a group of their own (:data:`OWN_GROUP`;
    the twin through ``setsid``), so this reaches all they started. Also right
    after the child was reaped: Linux keeps a process group's number while any
    process is still in the group.
    """
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Finished(NamedTuple):
    """A child that exited: its status (negative: killed by that signal) and output."""

    status: int
    output: bytes
    errors: bytes


class TimedOut(Exception):
    """A child ran past its time; it has been killed."""


class TooMuchOutput(Exception):
    """A child printed more than it may; it has been killed."""


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
        if b"\0" in arg:  # no program can be given one (the kernel ends each argument there)
            raise Refused(protocol.error("%s: arguments may not contain a NUL byte" % self.name))
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
    return protocol.error("%s did not finish within %s; stopped" % (name, duration(seconds)))


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
