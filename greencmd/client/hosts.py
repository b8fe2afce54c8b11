"""Which servers the client asks: ``--host`` values and ``--hosts-file`` lines.

``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address; a port left out is
the client's ``--port``, and then the server's name in the output has none either.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Target", "parse_target", "read_hosts_file", "targets"]


class Target(NamedTuple):
    """One server: where it is, and how its lines are prefixed."""

    host: str
    port: int
    label: str


_WITH_PORT = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>[^:]*)|(?P<host>[^:\[\]]+):(?P<port>[^:]*)")


def parse_target(text: str, default_port: int) -> Target:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address; raises ValueError."""
    text = text.strip()
    match = _WITH_PORT.fullmatch(text)
    if match:
        host = match["v6"] or match["host"]
        port_text = match["port6"] if match["v6"] else match["port"]
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("bad port %r in %r" % (port_text, text))
        port = int(port_text)
    elif text.startswith("[") and text.endswith("]"):
        host, port = text[1:-1], default_port
    elif text and not any(c in text for c in "[] \t"):
        host, port = text, default_port  # a name, an IPv4 address, or a bare IPv6 address
    else:
        raise ValueError("%r is not HOST, HOST:PORT or [IPV6]:PORT" % text)
    if port == default_port:
        label = host
    else:
        label = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return Target(host, port, label)


def read_hosts_file(path: str, default_port: int) -> list[Target]:
    """The servers of a hosts file; blank lines and ``#`` comments skipped. Raises ValueError.

    A comment may also end a line: ``10.0.0.5:9999  # web1``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc)) \
            from None
    found = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            found.append(parse_target(line, default_port))
        except ValueError as exc:
            raise ValueError("%s, line %d: %s" % (path, number, exc)) from None
    return found


def targets(hosts: tuple[str, ...], hosts_file: str | None, default_port: int) -> list[Target]:
    """Every server named, in order, each once; raises ValueError."""
    found = [parse_target(host, default_port) for host in hosts]
    if hosts_file:
        found += read_hosts_file(hosts_file, default_port)
    unique: dict[tuple[str, int], Target] = {}
    for target in found:
        unique.setdefault((target.host, target.port), target)
    return list(unique.values())


