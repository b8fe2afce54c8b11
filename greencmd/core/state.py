"""What every engine's commands and sessions read from the server, built once from the settings.

Each engine's ``commands.ServerState`` is this, plus what only that engine has (its
thread pool); :meth:`BaseState.build` is the one place that loads the commands,
words ``help``, and opens the counters, the audit log and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

from . import auth, protocol
from .audit import AuditLog
from .catalog import dispatch_table, load_catalog
from .logs import reopen_log_files
from .logtail import LastlogSource
from .settings import ServerConfig
from .stats import Stats
from .tls import reload_tls

__all__ = ["BaseState"]

TLSSettings = TypeVar("TLSSettings")


@dataclass
class BaseState:
    """Settings, the lastlog source, the dispatch table, the help line, the counters,
    and where answered requests are recorded (audit log, metrics)."""

    config: ServerConfig
    lastlog: LastlogSource
    commands: dict
    help: bytes
    stats: Stats
    audit: AuditLog | None
    metrics: object | None  # core.metrics.Metrics, imported only with --metrics
    #: The token ``auth`` must present now (None: no auth); SIGHUP may change it.
    auth_token: bytes | None

    @classmethod
    def build(cls, engine: str, config: ServerConfig, sessions: Collection,
              builtins: Mapping, program: Callable, plugin: Callable, **own: object):
        """The state of a server of ``engine``; ``own``: the engine's own fields.

        ``sessions``: the server's set of open sessions, which ``stats`` reads.
        ``program``/``plugin`` make a dispatch-table entry of a configured command
        or a plugin, in the engine's style.
        """
        catalog = load_catalog(config.commands)
        stats = Stats(engine, config.max_clients, catalog.names(), sessions)
        metrics = None
        if config.metrics:
            from .metrics import Metrics  # prometheus_client is needed only then

            metrics = Metrics(stats)
        return cls(config=config, lastlog=LastlogSource.choose(config),
                   commands=dispatch_table(builtins, catalog, program, plugin),
                   help=catalog.help(auth=config.auth_token is not None), stats=stats,
                   audit=AuditLog(config.audit_log) if config.audit_log else None,
                   metrics=metrics, auth_token=config.auth_token, **own)

    def reopen_files(self, tls: TLSSettings | None,
                     load_tls: Callable[[], TLSSettings]) -> TLSSettings | None:
        """On SIGHUP: reopen the log files and, for the connections to come, read the
        auth token and the TLS files again; returns the engine's TLS settings to use
        from now on (``tls``, or new ones ``load_tls`` made; None without TLS).

        Sessions already authenticated, and connections already encrypted, go on.
        """
        reopen_log_files()
        if self.config.auth_token_file and self.auth_token is not None:
            self.auth_token = auth.reread_token_file(self.config.auth_token_file,
                                                     self.auth_token)
        return None if tls is None else reload_tls(self.config, load_tls, tls)

    def finished(self, system: str, request: protocol.Request, reply: bytes,
                 started: float) -> None:
        """A request answered: its line in the ``--audit-log``, its time in ``--metrics``."""
        if self.audit is not None:
            self.audit.record(system, request, reply, started)
        if self.metrics is not None:
            self.metrics.observe(request.word, time.monotonic() - started)
