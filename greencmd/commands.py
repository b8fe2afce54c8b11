"""The gevent engine's commands: plain functions that read like blocking code.

Each takes the server's :class:`Runtime` and the request's argument and returns
the complete reply. ``lastlog`` waits on a child process and ``comhash`` on a
pool thread, but only this greenlet waits: the hub runs every other session
meanwhile. Compare ``greencmd/compare/twisted_server.py``, where the same work
is a chain of Deferred callbacks.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import gevent
from gevent.threadpool import ThreadPool

from . import jobs, protocol
from .config import ServerConfig, choose_lastlog_source
from .errors import describe_os_error

# gevent.subprocess's API, spawned by the stdlib's faster C code (see the module).
from .fast_subprocess import DEVNULL, PIPE, STDOUT, Popen

__all__ = ["Runtime", "Command", "COMMANDS", "lastlog", "comhash", "help_"]


@dataclass
class Runtime:
    """What commands need from the server: settings, the lastlog source, threads."""

    config: ServerConfig
    pool: ThreadPool
    lastlog_source: str | None
    lastlog_tried: tuple[str, ...]

    @classmethod
    def from_config(cls, config: ServerConfig) -> Runtime:
        """Choose the lastlog source and start the hashing threads."""
        source, tried = choose_lastlog_source(config)
        return cls(config, ThreadPool(config.hash_threads), source, tried)


class TailTimeout(Exception):
    """``tail`` ran past ``--command-timeout``."""


def lastlog(runtime: Runtime, arg: bytes) -> bytes:
    """``lastlog [N]``: the last N lines of the lastlog source, via ``tail``."""
    try:
        argv = jobs.lastlog_argv(arg, runtime.lastlog_source, runtime.lastlog_tried)
    except jobs.Refused as refused:
        return refused.reply
    return run_tail(argv, runtime.lastlog_source, runtime.config.command_timeout)


def run_tail(argv: list[str], source: str, timeout: float) -> bytes:
    """Run ``tail`` and frame its output; kill and reap it whatever happens.

    The child gets its own session, so a kill reaches anything it started. If
    this greenlet is killed (the client reset, the server gave up at shutdown),
    the ``finally`` still kills and reaps the child.
    """
    try:
        tail = Popen(argv, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, start_new_session=True)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % describe_os_error(exc))
    try:
        with gevent.Timeout(timeout, TailTimeout):
            output = read_capped(tail.stdout, jobs.LASTLOG_MAX_BYTES)
            status = tail.wait() if output is not None else None
    except TailTimeout:
        return jobs.lastlog_timed_out(source, timeout)
    finally:
        kill_and_reap(tail)
    return jobs.lastlog_result(source, status, output)


def read_capped(stream: BinaryIO, limit: int) -> bytes | None:
    """Everything up to EOF, or ``None`` once it is over ``limit`` bytes."""
    chunks = []
    size = 0
    while chunk := stream.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def kill_and_reap(child: Popen) -> None:
    """Kill ``child`` and all it started, if it still runs; wait for it; close its pipe."""
    try:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
    finally:
        child.stdout.close()


def comhash(runtime: Runtime, arg: bytes) -> bytes:
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


def help_(runtime: Runtime, arg: bytes) -> bytes:
    """``help``: one line listing the commands."""
    return protocol.HELP


class Command(NamedTuple):
    """A command function, and whether it waits (so replies before it are sent)."""

    run: Callable[[Runtime, bytes], bytes]
    waits: bool


#: The dispatch table; ``exit``/``quit`` end the session and are handled there.
COMMANDS: dict[bytes, Command] = {
    b"lastlog": Command(lastlog, waits=True),
    b"comhash": Command(comhash, waits=True),
    b"help": Command(help_, waits=False),
}
