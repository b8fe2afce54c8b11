"""Where a server listens, for both engines: a Unix socket's file, and how peers are named.

``--unix PATH`` replaces a stale socket file (one nobody listens on), refuses a
path that is not a socket or that another server listens on, and the file is
removed at shutdown. Peers on a Unix socket are named ``unix:uid=UID`` in the log,
from the kernel's ``SO_PEERCRED``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct

from .errors import BindError, cannot_listen, describe_os_error
from .settings import BACKLOG, format_address

__all__ = ["unix_address", "clear_stale_socket", "listen_unix", "listen_tcp", "remove_socket",
           "peer_name", "listening_on"]


def unix_address(path: str) -> str:
    """How logs and errors name a Unix socket."""
    return "unix:" + path


def clear_stale_socket(path: str) -> None:
    """Make way for a new socket at ``path``; raises BindError if it is not ours to take."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError("cannot listen on %s: %s" % (unix_address(path),
                                                     describe_os_error(exc))) from None
    if not stat.S_ISSOCK(mode):
        raise BindError("cannot listen on %s: the path exists and is not a socket"
                        % unix_address(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                raise BindError("cannot listen on %s: %s" % (
                    unix_address(path), describe_os_error(exc))) from None
        else:
            raise BindError("cannot listen on %s: another server is listening on it"
                            % unix_address(path))
    os.unlink(path)  # nobody listens: a stale file from a server that did not clean up


def listen_unix(path: str, mode: int) -> socket.socket:
    """A non-blocking listening Unix socket at ``path`` with file mode ``mode``."""
    clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The mode is set before anyone can connect: bind under a umask that
        # already gives the socket no more than ``mode``.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError("cannot listen on %s: %s" % (unix_address(path),
                                                     describe_os_error(exc))) from None
    sock.setblocking(False)
    return sock


def listen_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host``'s first address; raises BindError.

    Made from getaddrinfo's answer, protocol included, as asyncio makes its own:
    asyncio gives the connections accepted on a socket that says it is TCP no
    Nagle delay (``TCP_NODELAY``), and ``socket.create_server`` leaves the protocol
    unsaid. Non-blocking, as every reader of it waits in its event loop: with
    ``--workers`` each worker wakes for a new connection and one wins, and the
    others must get EAGAIN from accept(), not block their loop in it.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise cannot_listen(format_address(host, port), exc) from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # that address only, as create_server would
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        raise cannot_listen(format_address(host, port), exc) from None
    listener.setblocking(False)
    return listener


def remove_socket(path: str) -> None:
    """At shutdown: remove the socket file, if it is still a socket."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def peer_name(sock: socket.socket, address: object) -> str:
    """The peer as the log shows it: its IP address, or ``unix:uid=UID``."""
    if isinstance(address, tuple) and address[0]:  # IP: sock.family is slow in gevent
        return address[0]
    if sock.family != socket.AF_UNIX:
        return address[0]
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return "unix:uid=?"
    return "unix:uid=%d" % uid


def listening_on(sock: socket.socket) -> str:
    """Where a listening socket listens, as the log says it: ``HOST:PORT`` or ``unix:PATH``."""
    where = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return unix_address(where if isinstance(where, str) else where.decode())
    return ("[%s]:%d" if ":" in where[0] else "%s:%d") % where[:2]
