"""What a server says about itself when it starts: how it is protected, what it serves."""

from __future__ import annotations

from .logtail import LastlogSource
from .settings import ServerConfig

__all__ = ["startup_lines"]


def protection(config: ServerConfig) -> str:
    """One line: TLS on or off (and mutual), auth on or off."""
    if not config.tls_cert:
        tls = "TLS off"
    elif config.tls_client_ca:
        tls = "TLS on, mutual (clients need a certificate signed by %s)" % config.tls_client_ca
    else:
        tls = "TLS on"
    auth = ("auth on (each session must send auth TOKEN first)" if config.auth_token
            else "auth off")
    return "%s; %s" % (tls, auth)


def startup_lines(config: ServerConfig, lastlog: LastlogSource,
                  help_line: bytes | None = None) -> list[str]:
    """The log lines after "starting on": protection, the lastlog source, the commands."""
    lines = [protection(config), lastlog.describe()]
    if help_line is not None:
        lines.append(help_line.decode("utf-8", "replace").strip())
    return lines
