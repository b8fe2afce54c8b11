"""``greencmd serve --config FILE``: serve options and commands from a TOML file.

The file has two tables, both optional::

    [serve]                     # any serve option, spelled with - or _
    port = 9871
    max-clients = 50

    [commands.uptime]           # a command of your own (docs/protocol.md)
    run = ["uptime"]

The ``[serve]`` values become click's ``default_map``, so click itself keeps the
precedence: command line, then environment, then the file, then the default.
Every value is checked here first, so that a mistake is reported as one
sentence naming the file, the key and what is wrong.
"""

from __future__ import annotations

import sys

import click

from .programs import ProgramCommand, command_from_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "load"]

#: Serve options the file cannot set.
NOT_IN_FILE = {"config"}


class ConfigError(Exception):
    """The configuration file cannot be used; the message is one sentence."""


def load(path: str, command: click.Command,
         ctx: click.Context) -> tuple[dict[str, object], tuple[ProgramCommand, ...]]:
    """The ``default_map`` for ``command`` and the configured commands; raises ConfigError."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (path, exc)) from None
    unknown = sorted(set(data) - {"serve", "commands"})
    if unknown:
        raise ConfigError("%s: unknown table or key %r (allowed: [serve], [commands.NAME])"
                          % (path, unknown[0]))
    defaults = _serve_defaults(path, _table(path, data, "serve"), command, ctx)
    return defaults, _commands(path, _table(path, data, "commands"))


def _table(path: str, data: dict, name: str) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError("%s: %r must be a table ([%s])" % (path, name, name))
    return table


def _serve_defaults(path: str, table: dict, command: click.Command,
                    ctx: click.Context) -> dict[str, object]:
    params = {param.name: param for param in command.params
              if isinstance(param, click.Option) and param.name not in NOT_IN_FILE}
    defaults = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None:
            raise ConfigError("%s: [serve] has an unknown key %r (the keys are serve's "
                              "options, e.g. port, max-clients)" % (path, key))
        problem = _wrong_type(param, value)
        if problem is None:
            try:
                param.type.convert(value, param, ctx)
            except click.BadParameter as exc:
                problem = exc.message
        if problem:
            raise ConfigError("%s: [serve] %s: %s" % (path, key, problem))
        defaults[name] = value
    return defaults


def _wrong_type(param: click.Option, value: object) -> str | None:
    """What is wrong with the TOML type of ``value`` for ``param``, or None."""
    if param.is_flag:
        wanted, ok = "true or false", isinstance(value, bool)
    elif isinstance(param.type, (click.types.IntParamType,)):
        wanted, ok = "a whole number", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(param.type, click.types.FloatParamType):
        wanted = "a number"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif param.type.name == "size":
        wanted = "a number of bytes or a string such as \"10M\""
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
    else:
        wanted, ok = "a string", isinstance(value, str)
    return None if ok else "must be %s, not %r" % (wanted, value)


def _commands(path: str, tables: dict) -> tuple[ProgramCommand, ...]:
    commands: dict[str, ProgramCommand] = {}
    for name, table in tables.items():
        try:
            spec = command_from_table(name, table)
        except ValueError as exc:
            raise ConfigError("%s: [commands.%s]: %s" % (path, name, exc)) from None
        if spec.name.lower() in commands:
            raise ConfigError("%s: [commands.%s]: another command differs from it only in "
                              "case" % (path, name))
        commands[spec.name.lower()] = spec
    return tuple(commands.values())
