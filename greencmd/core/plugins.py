"""Plugin commands: functions that packages register in the ``greencmd.commands`` entry points.

A plugin is ``function(arg: str) -> str``. How it is called is each engine's
rule (docs/protocol.md): in the session's greenlet (gevent), on a worker thread
(Twisted), on a worker thread or awaited when it is a coroutine function
(asyncio). What it may return, and what a failure costs, is decided here.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from . import protocol
from .logs import RateLimit, log
from .programs import check_name

__all__ = ["PluginCommand", "load_plugins", "call_plugin", "ENTRY_POINT_GROUP",
           "TRACEBACK_INTERVAL", "describe_exception"]

ENTRY_POINT_GROUP = "greencmd.commands"
#: A docstring that opens with the command's syntax: ````disk [PATH]````: ...
_DOC_SYNTAX = re.compile(r"``([^`]+)``")
#: A plugin that fails logs one line each time, and its traceback at most this often:
#: anyone who can connect can make a plugin fail, and must not fill the disk.
TRACEBACK_INTERVAL = 60.0
_tracebacks = RateLimit(TRACEBACK_INTERVAL)


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

    @property
    def syntax(self) -> str:
        """How ``help`` shows it: the function's ``help`` attribute, or the ````NAME ...````
        that opens its docstring (``disk [PATH]``), else its name."""
        text = getattr(self.function, "help", None)
        if not isinstance(text, str):
            first = (getattr(self.function, "__doc__", None) or "").strip().split("\n")[0]
            match = _DOC_SYNTAX.match(first)
            text = match[1] if match and match[1].lower().split()[0] == self.name.lower() \
                else ""
        text = " ".join(text.split())
        return text if text and text.isprintable() and len(text) <= 80 else self.name

    def call(self, arg: bytes) -> bytes:
        """Call the function with the request's argument and return its reply.

        Raises what the function raises; :meth:`failed` makes that a reply.
        """
        return self.reply(self.function(os.fsdecode(arg)))

    def reply(self, returned: object) -> bytes:
        """The reply for what the function returned; raises TypeError if not a string."""
        if not isinstance(returned, str):
            raise TypeError("%s returned %s, not a string" % (self.origin,
                                                             type(returned).__name__))
        data = returned.encode("utf-8", "surrogateescape")
        return data if data.endswith(b"\n") else data + b"\n"

    def failed(self, exc: BaseException, format_trace: Callable[[], str],
               system: str) -> bytes:
        """Log one line for ``exc`` (and its traceback, at most once a minute); the error line.

        ``format_trace()`` gives the traceback text; it is called only when logged.
        """
        why = describe_exception(exc)
        log("Command %s (%s) failed: %s: %s" % (self.name, self.origin, type(exc).__name__,
                                                 why), system, "command_failed", "error",
            command=self.name, error=type(exc).__name__)
        if _tracebacks.allow(self.name):
            for line in format_trace().rstrip("\n").split("\n"):
                log("\t" + line, system)
        return protocol.error(why)


def describe_exception(exc: BaseException) -> str:
    """``str(exc)``, or its type's name when that is empty or itself raises."""
    try:
        text = str(exc)
    except Exception:  # a plugin's exception may fail even at that
        text = ""
    return text or type(exc).__name__


def call_plugin(plugin: PluginCommand, arg: bytes, system: str) -> bytes:
    """The reply of a plugin command; an exception becomes the error line (and a log line)."""
    try:
        return plugin.call(arg)
    except Exception as exc:
        return plugin.failed(exc, traceback.format_exc, system)


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
                problem = "cannot load %s: %s: %s" % (entry.value, type(exc).__name__,
                                                      describe_exception(exc))
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
