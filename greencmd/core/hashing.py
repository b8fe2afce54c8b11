"""``comhash``'s work: the SHA-1 of a regular file, streamed in chunks. No sockets.

Every engine runs :func:`hash_file` on a worker thread; only how it waits for
the thread differs. Errors come back as the reply, never as exceptions.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading

from . import protocol

__all__ = ["HASH_CHUNK", "hash_file"]

#: Read size for hashing: large enough that hashlib drops the GIL for most of it.
HASH_CHUNK = 1 << 20

_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def hash_file(arg: bytes, root: str | None, abandoned: threading.Event | None = None) -> bytes:
    """The whole ``comhash`` reply for the path ``arg``; never raises.

    Runs in a worker thread. Errors come back as the reply, not as exceptions:
    gevent's ThreadPool prints a traceback for every exception a job raises. The
    file is streamed in chunks, so memory stays flat whatever its size; FIFOs and
    devices are never opened. Once ``abandoned`` is set (nobody waits for the
    reply any more) it stops within one chunk; what it returns then is dropped.
    """
    if not arg:
        return protocol.NO_PATH
    if abandoned is not None and abandoned.is_set():
        return b""  # queued for a client that left before a thread was free: drop it
    requested = protocol.decode_path(arg)
    if "\0" in requested:
        return protocol.error("%r: a file name cannot contain a NUL byte" % requested)
    try:
        path = requested if root is None else _inside_root(requested, root)
        return protocol.hash_reply(_sha1_of_regular_file(path, abandoned))
    except OutsideRoot:
        return protocol.error("%s: outside the allowed root" % requested)
    except (OSError, ValueError) as exc:
        return protocol.error(str(exc))


class OutsideRoot(Exception):
    """The path resolves to somewhere outside ``--hash-root``."""


def _inside_root(path: str, root: str) -> str:
    # Relative paths are taken from the root; realpath resolves symlinks and "..",
    # so a link inside the root that points outside it is refused.
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise OutsideRoot(path)
    return real


def _sha1_of_regular_file(path: str, abandoned: threading.Event | None) -> str:
    _require_regular(os.stat(path).st_mode, path)
    # O_NONBLOCK: if the path became a FIFO since stat(), open() must not hang.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        _require_regular(os.fstat(fd).st_mode, path)
        digest = hashlib.sha1()
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        while True:
            count = f.readinto(buffer)
            if not count or abandoned is not None and abandoned.is_set():
                return digest.hexdigest()
            digest.update(view[:count])


def _require_regular(mode: int, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise ValueError("Not a regular file (%s): %r" % (kind, path))
