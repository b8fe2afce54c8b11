"""systemd without libsystemd: sockets it passes (socket activation) and readiness notices.

Socket activation: systemd passes listening sockets as descriptors 3 and up, with
``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES``. :func:`activated_listener`
picks the one to serve on (the one matching an explicit ``--host``/``--port`` or
``--unix``, else the first) and closes the rest.

Readiness (``Type=notify``): :class:`Notifier` sends datagrams to ``NOTIFY_SOCKET``:
``READY=1`` once the server listens, ``STOPPING=1`` when shutdown begins, and, at
every :attr:`Notifier.every` seconds, ``STATUS=`` with the open sessions and
``WATCHDOG=1`` when ``WATCHDOG_USEC`` asks for it (at half its interval).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from .errors import describe_os_error
from .logs import log
from .settings import ServerConfig

__all__ = ["activated_listener", "Notifier", "FIRST_FD"]

FIRST_FD = 3  # SD_LISTEN_FDS_START
#: How often STATUS is sent when no watchdog asks for more.
STATUS_EVERY = 10.0


def _passed(env: Mapping[str, str]) -> list[socket.socket]:
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    return [socket.socket(fileno=fd) for fd in range(FIRST_FD, FIRST_FD + count)]


def activated_listener(config: ServerConfig, explicit: set[str],
                       env: Mapping[str, str] = os.environ) -> socket.socket | None:
    """The passed socket to serve on, or None when systemd passed none.

    ``explicit``: which of ``host``, ``port``, ``unix`` the user gave. Raises
    ValueError (one sentence) when they match none of the passed sockets.
    The variables are removed, so that children do not see them.
    """
    passed = _passed(env)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not passed:
        return None
    chosen = None
    for sock in passed:
        if chosen is None and _matches(sock, config, explicit):
            chosen = sock
        elif sock is not chosen:
            log("Closing a socket systemd passed that matches nothing: %s" % _name(sock))
            sock.close()
    if chosen is None:
        raise ValueError("systemd passed %d socket(s), and none is the one asked for (%s); "
                         "leave --host/--port/--unix out to serve on what it passes"
                         % (len(passed), _asked(config, explicit)))
    chosen.setblocking(False)
    return chosen


def _matches(sock: socket.socket, config: ServerConfig, explicit: set[str]) -> bool:
    if sock.type != socket.SOCK_STREAM:
        return False
    if "unix" in explicit:
        return sock.family == socket.AF_UNIX and sock.getsockname() == config.unix
    if not explicit & {"host", "port"}:
        return True
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host, port = sock.getsockname()[:2]
    return (("port" not in explicit or port == config.port)
            and ("host" not in explicit or _same_host(host, config.host)))


def _same_host(bound: str, asked: str) -> bool:
    try:
        return bound in {info[4][0] for info in socket.getaddrinfo(asked, None)}
    except OSError:
        return bound == asked


def _name(sock: socket.socket) -> str:
    try:
        where = sock.getsockname()
    except OSError as exc:
        return describe_os_error(exc)
    return "unix:%s" % where if isinstance(where, str) else "%s:%d" % where[:2]


def _asked(config: ServerConfig, explicit: set[str]) -> str:
    if "unix" in explicit:
        return "--unix %s" % config.unix
    return " ".join("--%s %s" % (name, getattr(config, name))
                    for name in ("host", "port") if name in explicit)


class Notifier:
    """Readiness and watchdog notices to systemd; does nothing without ``NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address
        watchdog = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog = (watchdog is not None and watchdog.isdigit()
                         and (pid is None or pid == str(os.getpid())))
        #: Seconds between two ticks; None: no ticks needed.
        self.every: float | None = None
        if self.address is not None:
            self.every = int(watchdog) / 2e6 if self.watchdog else STATUS_EVERY

    def send(self, *lines: str) -> None:
        """One notice; a failure to send is logged, never raised."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log("Cannot notify systemd at %s: %s" % (self.address.lstrip("\0"),
                                                    describe_os_error(exc)))

    def ready(self, where: str) -> None:
        """The server listens."""
        self.send("READY=1", "STATUS=Serving on %s" % where)

    def stopping(self) -> None:
        """Shutdown began."""
        self.send("STOPPING=1", "STATUS=Shutting down")

    def tick(self, sessions: int) -> None:
        """Every :attr:`every` seconds: the open sessions, and the watchdog's ping."""
        lines = ["STATUS=Serving, %d session%s open" % (sessions, "" if sessions == 1 else "s")]
        if self.watchdog:
            lines.append("WATCHDOG=1")
        self.send(*lines)
