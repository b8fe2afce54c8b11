"""Server settings, shared by both engines, and how the lastlog source is chosen."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import protocol

__all__ = ["ServerConfig", "LASTLOG_CANDIDATES", "choose_lastlog_source"]

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
    #: Commands from the ``--config`` file (``programs.ProgramCommand``).
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


def choose_lastlog_source(config: ServerConfig) -> tuple[str | None, tuple[str, ...]]:
    """The file ``lastlog`` tails, and the candidates that were tried.

    An explicit ``--lastlog-file`` is taken as it is (a missing one is reported
    when ``lastlog`` runs); otherwise the first readable system log, else the
    server's own log file, else ``None``.
    """
    if config.lastlog_file:
        return config.lastlog_file, (config.lastlog_file,)
    tried = LASTLOG_CANDIDATES + ((config.log_file,) if config.log_file else ())
    for path in tried:
        if os.path.isfile(path) and os.access(path, os.R_OK):
            return path, tried
    return None, tried


def no_source_message(tried: tuple[str, ...]) -> str:
    """The error for ``lastlog`` when no source exists."""
    return ("no log file to tail (tried %s); start the server with --lastlog-file PATH"
            % ", ".join(tried))


def describe_lastlog_source(source: str | None, tried: tuple[str, ...]) -> str:
    """The start-up log line that names the lastlog source."""
    if source is None:
        return "lastlog source: none (%s)" % no_source_message(tried)
    return "lastlog source: %s" % source


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
