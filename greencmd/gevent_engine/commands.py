"""The gevent engine's commands: plain functions that read like blocking code.

Each takes the :class:`ServerState` and the request's argument and returns the
complete reply. ``lastlog`` waits on a child process and ``comhash`` on a pool
thread, but only this greenlet waits: the hub runs every other session
meanwhile. Compare ``twisted_engine/commands.py``, where the same work is a
chain of Deferred callbacks, and ``asyncio_engine/commands.py``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

import gevent
from gevent.threadpool import ThreadPool

from ..core import logtail, protocol
from ..core.errors import describe_os_error
from ..core.hashing import hash_file
from ..core.plugins import PluginCommand, call_plugin
from ..core.programs import OUTPUT_LIMIT, ProgramCommand, TimedOut, TooMuchOutput, timed_out
from ..core.settings import ServerConfig
from ..core.state import BaseState
from . import processes

__all__ = ["ServerState", "Command", "WATCH_AFTER", "BUILTINS", "lastlog", "comhash",
           "help_", "stats", "program", "plugin"]


#: Seconds a child's command (lastlog, a program) runs before a client reset is
#: watched for: most are done by then, and the child is killed whenever the reset
#: is seen. Other waiting commands are watched at once: the spec stops a gone
#: client's hash within a chunk.
WATCH_AFTER = 0.05


class Command(NamedTuple):
    """A command function, and whether it waits (so replies before it are sent first).

    ``run(state, arg, system)``: ``system`` names the session in the log.
    ``watch_after``: seconds it runs before a client reset is watched for.
    """

    run: Callable[[ServerState, bytes, str], bytes]
    waits: bool
    watch_after: float = 0.0


@dataclass
class ServerState(BaseState):
    """What commands read from the server (:class:`BaseState`), and the hashing threads."""

    pool: ThreadPool

    @classmethod
    def from_config(cls, config: ServerConfig, sessions: Collection) -> ServerState:
        """Choose the lastlog source, load plugins, start the hashing threads."""
        return cls.build("gevent", config, sessions, BUILTINS,
                         lambda spec: Command(functools.partial(program, spec), waits=True,
                                              watch_after=WATCH_AFTER),
                         lambda extra: Command(functools.partial(plugin, extra), waits=True),
                         pool=ThreadPool(config.hash_threads))


def lastlog(state: ServerState, arg: bytes, system: str) -> bytes:
    """``lastlog [N]``: the last N lines of the lastlog source, via ``tail``."""
    try:
        argv = logtail.lastlog_argv(arg, state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    source, timeout = state.lastlog.path, state.config.command_timeout
    try:
        tail = processes.run_tail(argv, timeout, logtail.LASTLOG_MAX_BYTES)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % describe_os_error(exc))
    except TimedOut:
        return logtail.lastlog_timed_out(source, timeout)
    except TooMuchOutput:
        return logtail.lastlog_result(source, None, None)
    return logtail.lastlog_result(source, tail.status, tail.output, tail.errors)


def program(spec: ProgramCommand, state: ServerState, arg: bytes, system: str) -> bytes:
    """A ``[commands.NAME]`` command: run its program, frame its output."""
    try:
        argv = spec.argv(arg)
    except protocol.Refused as refused:
        return refused.reply
    timeout = state.config.command_timeout
    try:
        done = processes.run(argv, timeout, OUTPUT_LIMIT)
    except OSError as exc:
        return spec.cannot_run(exc)
    except TimedOut:
        return timed_out(spec.name, timeout)
    except TooMuchOutput:
        return spec.too_much()
    return spec.reply(done.status, done.output, done.errors)


def plugin(extra: PluginCommand, state: ServerState, arg: bytes, system: str) -> bytes:
    """A plugin command, called in this greenlet (cooperative code just works).

    ``--command-timeout`` ends it only where it yields to gevent: a function that
    blocks without yielding holds up every session (docs: writing a plugin).
    """
    reply = None
    with gevent.Timeout(state.config.command_timeout, False):
        reply = call_plugin(extra, arg, system)
    return reply if reply is not None else timed_out(extra.name, state.config.command_timeout)


def comhash(state: ServerState, arg: bytes, system: str) -> bytes:
    """``comhash PATH``: the SHA-1 of a file, computed on a pool thread.

    If this greenlet is killed while it waits (the client reset, shutdown gave
    up), the thread is told to stop, and does within one chunk of the file.
    """
    if not arg:
        return protocol.NO_PATH
    abandoned = threading.Event()
    try:
        return state.pool.apply(hash_file, (arg, state.config.hash_root, abandoned))
    finally:
        abandoned.set()


def help_(state: ServerState, arg: bytes, system: str) -> bytes:
    """``help``: one line listing the commands."""
    return state.help


def stats(state: ServerState, arg: bytes, system: str) -> bytes:
    """``stats``: the server's counters."""
    return state.stats.reply()


#: The built-in commands; ``exit``/``quit`` end the session and ``follow`` streams:
#: the session handles those itself.
BUILTINS: dict[bytes, Command] = {
    b"lastlog": Command(lastlog, waits=True, watch_after=WATCH_AFTER),
    b"comhash": Command(comhash, waits=True),
    b"help": Command(help_, waits=False),
    b"stats": Command(stats, waits=False),
}
