"""The asyncio engine's commands: coroutines that ``await`` where the others wait.

Each takes the :class:`ServerState` and the request's argument and returns the
complete reply. ``lastlog`` awaits a child process, ``comhash`` a thread of the
executor; the event loop runs every other session meanwhile. Compare
``gevent_engine/commands.py`` (the same code without ``async``/``await``) and
``twisted_engine/commands.py`` (Deferred chains).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import traceback
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from ..core import logtail, protocol
from ..core.errors import describe_os_error
from ..core.hashing import hash_file
from ..core.plugins import PluginCommand
from ..core.programs import OUTPUT_LIMIT, ProgramCommand, TimedOut, TooMuchOutput, timed_out
from ..core.settings import ServerConfig
from ..core.state import BaseState
from . import processes

__all__ = ["ServerState", "Command", "BUILTINS", "lastlog", "comhash", "help_", "stats",
           "program", "plugin"]


class Command(NamedTuple):
    """A command coroutine function, and whether it waits (so replies before it are sent)."""

    run: Callable[[ServerState, bytes, str], Awaitable[bytes]]
    waits: bool


@dataclass
class ServerState(BaseState):
    """What commands read from the server (:class:`BaseState`), and the executor."""

    pool: ThreadPoolExecutor

    @classmethod
    def from_config(cls, config: ServerConfig, sessions: Collection) -> ServerState:
        """Choose the lastlog source, load plugins, make the executor."""
        return cls.build("asyncio", config, sessions, BUILTINS,
                         lambda spec: Command(functools.partial(program, spec), waits=True),
                         lambda extra: Command(functools.partial(plugin, extra), waits=True),
                         pool=ThreadPoolExecutor(config.hash_threads,
                                                 thread_name_prefix="greencmd"))

    async def in_thread(self, function: Callable, *args: object) -> object:
        """``function(*args)`` on a thread of the executor."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)


async def lastlog(state: ServerState, arg: bytes, system: str) -> bytes:
    """``lastlog [N]``: the last N lines of the lastlog source, via ``tail``."""
    try:
        argv = logtail.lastlog_argv(arg, state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    source, timeout = state.lastlog.path, state.config.command_timeout
    try:
        tail = await processes.run_tail(argv, timeout, logtail.LASTLOG_MAX_BYTES)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % describe_os_error(exc))
    except TimedOut:
        return logtail.lastlog_timed_out(source, timeout)
    except TooMuchOutput:
        return logtail.lastlog_result(source, None, None)
    return logtail.lastlog_result(source, tail.status, tail.output, tail.errors)


async def program(spec: ProgramCommand, state: ServerState, arg: bytes, system: str) -> bytes:
    """A ``[commands.NAME]`` command: run its program, frame its output."""
    try:
        argv = spec.argv(arg)
    except protocol.Refused as refused:
        return refused.reply
    timeout = state.config.command_timeout
    try:
        done = await processes.run(argv, timeout, OUTPUT_LIMIT)
    except OSError as exc:
        return spec.cannot_run(exc)
    except TimedOut:
        return timed_out(spec.name, timeout)
    except TooMuchOutput:
        return spec.too_much()
    return spec.reply(done.status, done.output, done.errors)


async def plugin(extra: PluginCommand, state: ServerState, arg: bytes, system: str) -> bytes:
    """A plugin command: awaited if it is a coroutine function, else called on a thread.

    ``--command-timeout`` cancels a coroutine; a thread cannot be stopped, only
    no longer waited for.
    """
    timeout = state.config.command_timeout
    try:
        if inspect.iscoroutinefunction(extra.function):
            text = extra.function(protocol.decode_path(arg))
            return extra.reply(await asyncio.wait_for(text, timeout))
        return await asyncio.wait_for(state.in_thread(extra.call, arg), timeout)
    except asyncio.TimeoutError:
        return timed_out(extra.name, timeout)
    except Exception as exc:
        return extra.failed(exc, traceback.format_exc, system)


async def comhash(state: ServerState, arg: bytes, system: str) -> bytes:
    """``comhash PATH``: the SHA-1 of a file, computed on a thread of the executor.

    If this coroutine is cancelled while it waits (the client reset, shutdown
    gave up), the thread is told to stop, and does within one chunk of the file.
    """
    if not arg:
        return protocol.NO_PATH
    abandoned = threading.Event()
    try:
        return await state.in_thread(hash_file, arg, state.config.hash_root, abandoned)
    finally:
        abandoned.set()


async def help_(state: ServerState, arg: bytes, system: str) -> bytes:
    """``help``: one line listing the commands."""
    return state.help


async def stats(state: ServerState, arg: bytes, system: str) -> bytes:
    """``stats``: the server's counters."""
    return state.stats.reply()


#: The built-in commands; ``exit``/``quit`` end the session and ``follow`` streams:
#: the session handles those itself.
BUILTINS: dict[bytes, Command] = {
    b"lastlog": Command(lastlog, waits=True),
    b"comhash": Command(comhash, waits=True),
    b"help": Command(help_, waits=False),
    b"stats": Command(stats, waits=False),
}
