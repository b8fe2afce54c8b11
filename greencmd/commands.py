"""The gevent engine's commands: plain functions that read like blocking code.

Each takes the server's :class:`Runtime` and the request's argument and returns
the complete reply. ``lastlog`` waits on a child process and ``comhash`` on a
pool thread, but only this greenlet waits: the hub runs every other session
meanwhile. Compare ``greencmd/compare/twisted_server.py``, where the same work
is a chain of Deferred callbacks.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

import gevent
from gevent.threadpool import ThreadPool

from . import children, jobs, protocol
from .config import ServerConfig, choose_lastlog_source
from .errors import describe_os_error
from .programs import (
    OUTPUT_LIMIT,
    PluginCommand,
    ProgramCommand,
    call_plugin,
    load_extras,
    timed_out,
)
from .stats import Stats

__all__ = ["Runtime", "Command", "BUILTINS", "lastlog", "comhash", "help_", "stats",
           "program", "plugin"]


class Command(NamedTuple):
    """A command function, and whether it waits (so replies before it are sent).

    ``run(runtime, arg, system)``: ``system`` names the session in the log.
    """

    run: Callable[[Runtime, bytes, str], bytes]
    waits: bool


@dataclass
class Runtime:
    """What commands need from the server: settings, the lastlog source, threads,
    the command table, the help line and the counters."""

    config: ServerConfig
    pool: ThreadPool
    lastlog_source: str | None
    lastlog_tried: tuple[str, ...]
    commands: dict[bytes, Command]
    help: bytes
    stats: Stats

    @classmethod
    def from_config(cls, config: ServerConfig, sessions: Collection) -> Runtime:
        """Choose the lastlog source, load plugins, start the hashing threads.

        ``sessions``: the server's set of open sessions, which ``stats`` reads.
        """
        source, tried = choose_lastlog_source(config)
        extras = load_extras(config.commands)
        commands = dict(BUILTINS)
        for spec in extras.programs:
            commands[spec.word] = Command(functools.partial(program, spec), waits=True)
        for extra in extras.plugins:
            commands[extra.word] = Command(functools.partial(plugin, extra), waits=True)
        return cls(config, ThreadPool(config.hash_threads), source, tried, commands,
                   extras.help(), Stats("gevent", config.max_clients, extras.names(), sessions))


def lastlog(runtime: Runtime, arg: bytes, system: str) -> bytes:
    """``lastlog [N]``: the last N lines of the lastlog source, via ``tail``."""
    try:
        argv = jobs.lastlog_argv(arg, runtime.lastlog_source, runtime.lastlog_tried)
    except jobs.Refused as refused:
        return refused.reply
    source, timeout = runtime.lastlog_source, runtime.config.command_timeout
    try:
        tail = children.run(argv, timeout, jobs.LASTLOG_MAX_BYTES)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % describe_os_error(exc))
    except children.TimedOut:
        return jobs.lastlog_timed_out(source, timeout)
    except children.TooMuchOutput:
        return jobs.lastlog_result(source, None, None)
    return jobs.lastlog_result(source, tail.status, tail.output, tail.errors)


def program(spec: ProgramCommand, runtime: Runtime, arg: bytes, system: str) -> bytes:
    """A ``[commands.NAME]`` command: run its program, frame its output."""
    try:
        argv = spec.argv(arg)
    except jobs.Refused as refused:
        return refused.reply
    timeout = runtime.config.command_timeout
    try:
        done = children.run(argv, timeout, OUTPUT_LIMIT)
    except OSError as exc:
        return spec.cannot_run(exc)
    except children.TimedOut:
        return timed_out(spec.name, timeout)
    except children.TooMuchOutput:
        return spec.too_much()
    return spec.reply(done.status, done.output, done.errors)


def plugin(extra: PluginCommand, runtime: Runtime, arg: bytes, system: str) -> bytes:
    """A plugin command, called in this greenlet (cooperative code just works).

    ``--command-timeout`` ends it only where it yields to gevent: a function that
    blocks without yielding holds up every session (docs: writing a plugin).
    """
    reply = None
    with gevent.Timeout(runtime.config.command_timeout, False):
        reply = call_plugin(extra, arg, system)
    return reply if reply is not None else timed_out(extra.name, runtime.config.command_timeout)


def comhash(runtime: Runtime, arg: bytes, system: str) -> bytes:
    """``comhash PATH``: the SHA-1 of a file, computed on a pool thread.

    If this greenlet is killed while it waits (the client reset, shutdown gave
    up), the thread is told to stop, and does within one chunk of the file.
    """
    if not arg:
        return protocol.NO_PATH
    abandoned = threading.Event()
    try:
        return runtime.pool.apply(jobs.hash_file, (arg, runtime.config.hash_root, abandoned))
    finally:
        abandoned.set()


def help_(runtime: Runtime, arg: bytes, system: str) -> bytes:
    """``help``: one line listing the commands."""
    return runtime.help


def stats(runtime: Runtime, arg: bytes, system: str) -> bytes:
    """``stats``: the server's counters."""
    return runtime.stats.reply()


#: The built-in commands; ``exit``/``quit`` end the session and ``follow`` streams:
#: the session handles those itself.
BUILTINS: dict[bytes, Command] = {
    b"lastlog": Command(lastlog, waits=True),
    b"comhash": Command(comhash, waits=True),
    b"help": Command(help_, waits=False),
    b"stats": Command(stats, waits=False),
}
