"""The Twisted twin's commands: each returns its reply, or a Deferred chain that will.

These are the chains the comparison exists to show: ``lastlog`` and configured
commands are a ProcessProtocol whose Deferred fires at ``processEnded``, then a
callback that words the reply and an errback for a timeout or too much output;
``comhash`` is ``deferToThread`` whose cancel tells the thread to stop; a plugin
is ``deferToThread`` with an errback. Compare ``gevent_engine/commands.py``,
where the same work reads as blocking calls.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Collection
from dataclasses import dataclass

from twisted.internet import defer, reactor, threads
from twisted.python.failure import Failure

from ..core import logtail, protocol
from ..core.errors import describe_os_error
from ..core.hashing import hash_file
from ..core.plugins import PluginCommand
from ..core.programs import OUTPUT_LIMIT, ProgramCommand, TimedOut, TooMuchOutput, timed_out
from ..core.settings import ServerConfig
from ..core.state import BaseState
from . import processes

__all__ = ["ServerState", "Reply", "lastlog", "comhash", "program", "plugin", "help_",
           "stats", "BUILTINS"]

#: What a command returns: the reply now, or a Deferred that fires with it.
Reply = bytes | defer.Deferred


@dataclass
class ServerState(BaseState):
    """What commands read from the server (:class:`BaseState`); threads are the reactor's."""

    @classmethod
    def from_config(cls, config: ServerConfig, sessions: Collection) -> ServerState:
        """Choose the lastlog source and load plugins; ``stats`` reads ``sessions``."""
        return cls.build("twisted", config, sessions, BUILTINS,
                         lambda spec: functools.partial(program, spec),
                         lambda extra: functools.partial(plugin, extra))


def lastlog(state: ServerState, arg: bytes, system: str) -> Reply:
    """``lastlog [N]``: tail's Deferred, a callback that frames, an errback for the rest."""
    try:
        argv = logtail.lastlog_argv(arg, state.lastlog)
    except protocol.Refused as refused:
        return refused.reply
    source, timeout = state.lastlog.path, state.config.command_timeout
    d = processes.run(argv, timeout, logtail.LASTLOG_MAX_BYTES)
    return d.addCallbacks(lambda tail: logtail.lastlog_result(source, *tail),
                          lastlog_failed, errbackArgs=(source, timeout))


def lastlog_failed(failure: Failure, source: str, timeout: float) -> bytes:
    """Errback: no tail, a timeout or too much output becomes its error line; the rest
    passes on."""
    if failure.check(OSError):  # out of descriptors, or no tail
        return protocol.error("cannot run tail: %s" % describe_os_error(failure.value))
    if failure.check(TimedOut):
        return logtail.lastlog_timed_out(source, timeout)
    failure.trap(TooMuchOutput)
    return logtail.lastlog_result(source, None, None)


def program(spec: ProgramCommand, state: ServerState, arg: bytes, system: str) -> Reply:
    """A ``[commands.NAME]`` command: the same Deferred, other words."""
    try:
        argv = spec.argv(arg)
    except protocol.Refused as refused:
        return refused.reply
    timeout = state.config.command_timeout
    d = processes.run(argv, timeout, OUTPUT_LIMIT)
    return d.addCallbacks(lambda done: spec.reply(*done), program_failed,
                          errbackArgs=(spec, timeout))


def program_failed(failure: Failure, spec: ProgramCommand, timeout: float) -> bytes:
    """Errback: a program that cannot start, a timeout or too much output becomes its
    error line; the rest passes on."""
    if failure.check(OSError):
        return spec.cannot_run(failure.value)
    if failure.check(TimedOut):
        return timed_out(spec.name, timeout)
    failure.trap(TooMuchOutput)
    return spec.too_much()


def plugin(extra: PluginCommand, state: ServerState, arg: bytes, system: str) -> Reply:
    """A plugin command: deferToThread, a timeout, an errback for what it raises.

    The timeout cannot stop the thread; it only stops the wait for it.
    """
    d = threads.deferToThread(extra.call, arg)
    d.addTimeout(state.config.command_timeout, reactor)
    return d.addErrback(plugin_failed, extra, state.config.command_timeout, system)


def plugin_failed(failure: Failure, extra: PluginCommand, timeout: float,
                  system: str) -> bytes | Failure:
    """Errback: a timeout or an exception becomes the error line; a cancel passes on."""
    if failure.check(defer.CancelledError):
        return failure
    if failure.check(defer.TimeoutError):
        return timed_out(extra.name, timeout)
    return extra.failed(failure.value, failure.getTraceback, system)


def comhash(state: ServerState, arg: bytes, system: str) -> Reply:
    """``comhash PATH``: deferToThread, and an errback that stops the thread on a cancel.

    hash_file words every error as the reply itself, so no other errback is
    needed. A cancel (client gone, shutdown) reaches the session as CancelledError.
    """
    if not arg:
        return protocol.NO_PATH
    abandoned = threading.Event()
    d = threads.deferToThread(hash_file, arg, state.config.hash_root, abandoned)
    return d.addErrback(stop_hashing, abandoned)


def stop_hashing(failure: Failure, abandoned: threading.Event) -> Failure:
    """Errback: the wait was cancelled; tell the thread to stop within a chunk. Passes on."""
    failure.trap(defer.CancelledError)
    abandoned.set()
    return failure


def help_(state: ServerState, arg: bytes, system: str) -> Reply:
    """``help``: one line listing the commands."""
    return state.help


def stats(state: ServerState, arg: bytes, system: str) -> Reply:
    """``stats``: the server's counters."""
    return state.stats.reply()


#: The built-in commands; ``exit``/``quit``, ``auth`` and ``follow`` are the session's own.
BUILTINS = {b"lastlog": lastlog, b"comhash": comhash, b"help": help_, b"stats": stats}
