"""Which servers the client asks: ``--host`` values and ``--hosts-file`` lines.

``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address; a port left out is
the client's ``--port``, and then the server's name in the output has none either.

A hosts file is one server per line, or, in the INI layout of Ansible inventories,
``[group]`` sections of servers and ``[group:vars]`` sections of ``key=value``
settings; a server's own line may end in settings too (``host:port tls=true``).
The keys are the client's option names without dashes: ``tls``, ``cafile``,
``cert``, ``key``, ``token-file``, ``timeout``. A server's line wins over its
group's vars, which win over the command line. ``#`` starts a comment anywhere.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Target", "parse_target", "read_hosts_file", "targets", "SETTINGS"]

#: The settings a hosts file may give a server or a group: key -> what it must be.
SETTINGS = {"tls": "true or false", "cafile": "a file", "cert": "a file", "key": "a file",
            "token-file": "a file", "timeout": "a number of seconds"}
_SECTION = re.compile(r"\[(?P<group>[A-Za-z0-9_.-]+)(?P<vars>:vars)?\]")


class Target(NamedTuple):
    """One server: where it is, how its lines are prefixed, and its own settings."""

    host: str
    port: int
    label: str
    settings: tuple[tuple[str, str], ...] = ()  # (key, value) from the hosts file


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


def read_hosts_file(path: str, default_port: int,
                    groups: tuple[str, ...] = ()) -> list[Target]:
    """The servers of a hosts file (of ``groups`` only, if given). Raises ValueError."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc)) \
            from None
    members: list[tuple[str | None, Target, dict[str, str]]] = []
    group_vars: dict[str, dict[str, str]] = {}
    group, in_vars = None, False
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            section = _SECTION.fullmatch(line)
            if section:
                group, in_vars = section["group"], bool(section["vars"])
                group_vars.setdefault(group, {})
            elif in_vars:
                group_vars[group].update(_settings([line]))
            else:
                first, *rest = line.split()
                members.append((group, parse_target(first, default_port), _settings(rest)))
        except ValueError as exc:
            raise ValueError("%s, line %d: %s" % (path, number, exc)) from None
    unknown = sorted(set(groups) - set(group_vars))
    if unknown:
        raise ValueError("%s has no group %r (it has: %s)" % (
            path, unknown[0], ", ".join(sorted(group_vars)) or "none"))
    return [target._replace(settings=tuple({**group_vars.get(member_group, {}),
                                            **own}.items()))
            for member_group, target, own in members if not groups or member_group in groups]


def _settings(words: list[str]) -> dict[str, str]:
    """``key=value`` words as settings; raises ValueError naming a bad one."""
    found = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or key not in SETTINGS:
            raise ValueError("%r is not a setting (key=value, the keys: %s)"
                             % (word, ", ".join(SETTINGS)))
        if key == "tls" and value.lower() not in ("true", "false", "yes", "no"):
            raise ValueError("tls must be true or false, not %r" % value)
        if key == "timeout":
            try:
                if float(value) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError("timeout must be a number of seconds above 0, not %r"
                                 % value) from None
        found[key] = value
    return found


def targets(hosts: tuple[str, ...], hosts_file: str | None, default_port: int,
            groups: tuple[str, ...] = ()) -> list[Target]:
    """Every server named, in order, each once; raises ValueError."""
    found = [parse_target(host, default_port) for host in hosts]
    if hosts_file:
        found += read_hosts_file(hosts_file, default_port, groups)
    unique: dict[tuple[str, int], Target] = {}
    for target in found:
        unique.setdefault((target.host, target.port), target)
    return list(unique.values())


