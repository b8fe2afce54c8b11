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
import subprocess as std_subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import gevent
from gevent.event import AsyncResult
from gevent.os import make_nonblocking, nb_read
from gevent.threadpool import ThreadPool

from . import jobs, protocol
from .config import ServerConfig, choose_lastlog_source

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
        child, exited = spawn_watched(argv)
    except OSError as exc:
        return protocol.error("cannot run tail: %s" % exc)
    fd = child.stdout.fileno()
    make_nonblocking(fd)
    try:
        with gevent.Timeout(timeout, TailTimeout):
            output = _read_capped(fd)
            status = exited.get() if output is not None else None
    except TailTimeout:
        return jobs.lastlog_timed_out(source, timeout)
    finally:
        _kill_and_reap(child, exited)
    return jobs.lastlog_result(source, status, output)


def spawn_watched(argv: list[str]) -> tuple[std_subprocess.Popen, AsyncResult]:
    """Start ``argv`` (stdout a pipe, stderr merged, own session); watch its exit.

    Spawned by the stdlib's ``Popen``, whose C ``fork_exec`` (vfork) starts a
    child several times faster than ``gevent.subprocess``, which forks in
    Python. The wait stays cooperative: the same libev child watcher that
    ``gevent.subprocess`` uses reports the exit, and it is registered before this
    greenlet yields, so the exit cannot be missed. Must run in the hub's thread.
    """
    child = std_subprocess.Popen(argv, stdin=std_subprocess.DEVNULL,
                                 stdout=std_subprocess.PIPE, stderr=std_subprocess.STDOUT,
                                 start_new_session=True)
    exited = AsyncResult()
    watcher = gevent.get_hub().loop.child(child.pid, False)

    def on_exit() -> None:
        watcher.stop()
        exited.set(os.waitstatus_to_exitcode(watcher.rstatus))
        watcher.close()

    watcher.start(on_exit)
    return child, exited


def _read_capped(fd: int) -> bytes | None:
    """Everything up to EOF, or ``None`` past :data:`jobs.LASTLOG_MAX_BYTES`."""
    chunks = []
    size = 0
    while True:
        chunk = nb_read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > jobs.LASTLOG_MAX_BYTES:
            return None
        chunks.append(chunk)


def _kill_and_reap(child: std_subprocess.Popen, exited: AsyncResult) -> None:
    if not exited.ready():
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Reaped by the watcher; telling the stdlib object keeps it from reaping too.
    child.returncode = exited.get()
    child.stdout.close()


def comhash(runtime: Runtime, arg: bytes) -> bytes:
    """``comhash PATH``: the SHA-1 of a file, computed on a pool thread.

    If this greenlet is killed while it waits, the thread finishes its file and
    the result is dropped.
    """
    if not arg:
        return protocol.NO_PATH
    return runtime.pool.apply(jobs.hash_file, (arg, runtime.config.hash_root))


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
