"""Server settings, shared by every engine: ``ServerConfig`` and the knobs beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import protocol

__all__ = ["ServerConfig", "LASTLOG_CANDIDATES", "BACKLOG", "RECV_SIZE", "LINGER_SECONDS",
           "LINGER_BYTES", "REFUSING", "format_address"]

#: Listen backlog: the default 128 drops part of a burst of a few hundred connects.
BACKLOG = 4096
#: Bytes asked of one recv(); a pipelined burst is split into lines in one go.
RECV_SIZE = 65536
#: After the server hangs up, how long and how much it reads and drops, so that the
#: client's unread requests do not turn its last reply into a reset (lingering close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20

#: Connections being refused at once, beyond --max-clients sessions. Past that,
#: a server stops accepting until one ends: a flood waits in the kernel's
#: listen queue instead of filling the process with descriptors.
REFUSING = 100

#: System logs tried, in order, when --lastlog-file is not given.
LASTLOG_CANDIDATES = ("/var/log/syslog", "/var/log/messages")


@dataclass(frozen=True)
class ServerConfig:
    """Every ``greencmd serve`` option; the defaults are those of docs/cli.md."""

    host: str = protocol.DEFAULT_HOST
    port: int = protocol.DEFAULT_PORT
    max_clients: int = 10
    lastlog_file: str | None = None
    hash_root: str | None = None
    hash_threads: int = os.cpu_count() or 1
    max_line: int = protocol.DEFAULT_MAX_LINE
    idle_timeout: float = 300
    command_timeout: float = 30
    grace: float = 10
    log_file: str | None = None
    log_max_size: int = 10 << 20
    log_keep: int = 3
    quiet: bool = False
    log_format: str = "text"  # or "json"
    #: ``--audit-log``: a JSON line per request goes there (``core.audit``).
    audit_log: str | None = None
    #: ``--metrics``: where ``/metrics`` is served, ``(host, port)``; None: nowhere.
    metrics: tuple[str, int] | None = None
    #: Commands from the ``--config`` file (``core.programs.ProgramCommand``).
    commands: tuple = ()
    #: A Unix socket to listen on instead of TCP, and its file mode.
    unix: str | None = None
    unix_mode: int = 0o600
    #: TLS: the listener's certificate and key (PEM), and the CA of client certificates.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    #: The token ``auth`` must present (from ``--auth-token-file``); None: no auth.
    auth_token: bytes | None = field(default=None, repr=False)
    #: The file it was read from, which SIGHUP reads again.
    auth_token_file: str | None = None


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
