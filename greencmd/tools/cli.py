"""The ``greencmd`` command line (docs/cli.md): ``serve``, ``client``, ``compare``, ``bench``.

Every ``serve`` option may also come from ``GREENCMD_<OPTION>``. Errors a user
can cause end in one sentence on stderr and an exit status, never a traceback.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import textwrap

import click
from click.core import ParameterSource

from .. import __version__
from ..client import single as client
from ..client.hosts import parse_target, targets
from ..core import protocol
from ..core.auth import is_loopback, read_token_file
from ..core.errors import BindError, describe_os_error
from ..core.settings import ServerConfig

__all__ = ["cli", "main"]

EXIT_CANNOT_BIND = 1


def _option(name: str, *decls: str, **kwargs):
    """A click option whose variable is GREENCMD_<NAME> and whose help shows it."""
    env = "GREENCMD_" + name.lstrip("-").replace("-", "_").upper()
    kwargs.setdefault("show_default", True)
    return click.option(name, *decls, envvar=env, show_envvar=True, **kwargs)


class FileMode(click.ParamType):
    """An octal file mode such as ``600`` or ``0660``."""

    name = "mode"

    def convert(self, value, param, ctx) -> int:
        """``660`` -> 0o660; anything else is a usage error (exit 2)."""
        if isinstance(value, int):
            return value
        if not re.fullmatch(r"0?[0-7]{3}", str(value).strip()):
            self.fail("%r is not an octal file mode such as 600" % value, param, ctx)
        return int(str(value).strip(), 8)


class ByteSize(click.ParamType):
    """A size in bytes: a whole number, or with a K, M or G suffix (powers of 1024)."""

    name = "size"
    SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30}

    def convert(self, value, param, ctx) -> int:
        """``10M`` -> 10485760; anything else is a usage error (exit 2)."""
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"(\d{1,15})([KMG]?)", str(value).strip(), re.IGNORECASE)
        if match is None:
            self.fail("%r is not a size: a number of bytes, optionally with a K, M or G "
                      "suffix" % value, param, ctx)
        return int(match[1]) << self.SHIFTS[match[2].upper()]


def _read_config(ctx: click.Context, param: click.Parameter, path: str | None) -> tuple:
    """Eager callback of ``--config``: the file's [serve] table becomes the defaults.

    Returns the configured commands. Runs before the other options are read,
    so click applies its own precedence (command line, environment, then this
    ``default_map``, then the defaults).
    """
    if not path:
        return ()
    from ..core.configfile import ConfigError, load

    try:
        ctx.default_map, commands = load(path, ctx.command, ctx)
    except ConfigError as exc:
        # A hint of our own: click's would name GREENCMD_CONFIG even for a command-line value.
        raise click.BadParameter(str(exc), param_hint="'--config'") from None
    return commands


_host = _option("--host", default=protocol.DEFAULT_HOST,
                help="Address to bind; 0.0.0.0 or :: serves other machines.")
_port = _option("--port", default=protocol.DEFAULT_PORT, type=click.IntRange(0, 65535),
                help="TCP port; 0 picks a free one (the log shows it).")
_server_port = _option("--port", default=protocol.DEFAULT_PORT, type=click.IntRange(1, 65535),
                       help="The server's TCP port (for a --host without one).")


def _client_tls_files(command):
    """--cafile, --cert and --key, as the client and bench take them (see _client_tls)."""
    for option in reversed([
            click.option("--cafile", default=None, type=click.Path(dir_okay=False),
                         help="Verify the server against this CA file instead (implies "
                              "--tls)."),
            click.option("--cert", default=None, type=click.Path(dir_okay=False),
                         help="Client certificate (PEM) for mutual TLS (implies --tls); "
                              "needs --key."),
            click.option("--key", default=None, type=click.Path(dir_okay=False),
                         help="Private key of --cert.")]):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="greencmd")
def cli() -> None:
    """A tiny line-based TCP command server on gevent, reachable with netcat."""


@cli.command()
@_host
@_port
@_option("--max-clients", default=10, type=click.IntRange(1),
         help="Sessions open at once; more are refused.")
@_option("--lastlog-file", default=None, type=str,
         help="The file lastlog tails. Default: /var/log/syslog, /var/log/messages, "
              "or the server's own --log-file, whichever exists first.")
@_option("--hash-root", default=None,
         type=click.Path(exists=True, file_okay=False, resolve_path=True),
         help="Only let comhash read files under this directory (symlinks resolved).")
@_option("--hash-threads", default=os.cpu_count() or 1, type=click.IntRange(1),
         show_default="number of CPUs", help="Threads that hash files.")
@_option("--max-line", default=protocol.DEFAULT_MAX_LINE, type=click.IntRange(1),
         help="Longest request line, in bytes.")
@_option("--idle-timeout", default=300.0, type=click.FloatRange(0),
         help="Seconds a session may send no complete line; 0 disables.")
@_option("--command-timeout", default=30.0, type=click.FloatRange(0, min_open=True),
         help="Seconds a lastlog, a configured or a plugin command may take before it "
              "is stopped (a follow has no limit).")
@_option("--grace", default=10.0, type=click.FloatRange(0),
         help="Seconds in-flight commands get to finish at shutdown.")
@_option("--log-file", default=None, show_default="$XDG_STATE_HOME/greencmd/server.log",
         help="Also append the log to this file (directories are created); '' (or "
              "GREENCMD_LOG_FILE set empty) turns it off. SIGHUP reopens it.")
@_option("--log-max-size", default="10M", type=ByteSize(),
         help="Rotate the log file at this size (K, M or G suffixes, powers of 1024); "
              "0 never rotates (leave it to logrotate and SIGHUP).")
@_option("--log-keep", default=3, type=click.IntRange(1),
         help="Old log files kept by rotation: server.log.1 (the newest) and up.")
@_option("--log-format", default="text", type=click.Choice(["text", "json"]),
         help="text: Twisted-style lines; json: one JSON object per line (time, level, "
              "session, peer, event, request, reason), to the same places.")
@_option("--metrics", default=None, type=str, show_default="none",
         help="Serve Prometheus metrics at http://HOST:PORT/metrics (the stats figures, "
              "command latency, the process). A HOST other than loopback needs "
              "--auth-token-file or --no-auth, as --host does.")
@_option("--audit-log", default=None, type=click.Path(dir_okay=False), show_default="none",
         help="Append one JSON line per request to this file (time, peer, session, command, "
              "the argument's length, ok/error/refused, seconds); created mode 600.")
@_option("--quiet", is_flag=True, default=False,
         help="Log only connections, errors and lifecycle, not every command.")
@_option("--engine", type=click.Choice(["gevent", "twisted", "asyncio"]), default="gevent",
         help="gevent, the Twisted twin, or the asyncio engine: the same server in "
              "each style.")
@_option("--workers", default=1, type=click.IntRange(1),
         help="Server processes sharing the port (gevent and asyncio engines); "
              "--max-clients applies to each.")
@_option("--unix", default=None, type=click.Path(dir_okay=False), show_default="none",
         help="Listen on this Unix socket instead of TCP (--host and --port unused). A "
              "stale socket file is replaced; it is removed at shutdown.")
@_option("--unix-mode", default="600", type=FileMode(),
         help="Octal file mode of the --unix socket: who may connect.")
@_option("--tls-cert", default=None, type=click.Path(dir_okay=False), show_default="none",
         help="PEM certificate (chain) of the listener: it then speaks TLS 1.2+ only. "
              "Needs --tls-key.")
@_option("--tls-key", default=None, type=click.Path(dir_okay=False), show_default="none",
         help="PEM private key of --tls-cert.")
@_option("--tls-client-ca", default=None, type=click.Path(dir_okay=False),
         show_default="none",
         help="PEM CA file: clients must present a certificate it signed (mutual TLS).")
@_option("--auth-token-file", default=None, type=click.Path(dir_okay=False),
         show_default="none",
         help="File whose first line is the token (16+ characters) every session must "
              "send first as 'auth TOKEN'. Must not be readable by others (chmod 600).")
@_option("--no-auth", is_flag=True, default=False,
         help="Allow a --host other than loopback without --auth-token-file.")
@_option("--config", default=None, is_eager=True, expose_value=True, callback=_read_config,
         type=click.Path(dir_okay=False), show_default="none",
         help="A TOML file: serve options in a [serve] table (same names), commands in "
              "[commands.NAME] tables. The command line and the environment win over it.")
@click.pass_context
def serve(ctx: click.Context, engine: str, workers: int, config: tuple,
          auth_token_file: str | None, no_auth: bool, **options: object) -> None:
    """Run the server in the foreground until SIGTERM or SIGINT; log to stdout."""
    from ..core import logs

    # The loopback rule is for TCP; file permissions guard a Unix socket.
    token = _token(auth_token_file, str(options["host"]), no_auth or bool(options["unix"]))
    _check_tls(options["tls_cert"], options["tls_key"], options["tls_client_ca"])
    options["metrics"] = _metrics_address(options["metrics"], token is not None or no_auth)

    if engine == "asyncio" and options["tls_cert"] and sys.version_info < (3, 11):
        raise click.UsageError("TLS with --engine asyncio needs Python 3.11 or newer "
                               "(StreamWriter.start_tls); use --engine gevent or twisted.")
    if workers > 1 and engine == "twisted":
        raise click.UsageError("--workers is for the gevent and asyncio engines only.")
    if workers > 1 and options["metrics"]:
        # Each worker would bind the same port: one serves, the others fail and are
        # started again every second, for ever.
        raise click.UsageError("--metrics serves one process's figures, and the workers "
                               "cannot all listen on its port: run one process "
                               "(no --workers) to have metrics.")
    # GREENCMD_LOG_FILE= means "no log file", as --log-file '' does, though click
    # ignores an empty variable; so do the quotes copied from that option.
    if options["log_file"] in ("''", '""'):
        options["log_file"] = ""
    # And an empty variable wins over the config file, as any variable does.
    if (os.environ.get("GREENCMD_LOG_FILE") == ""
            and ctx.get_parameter_source("log_file") != ParameterSource.COMMANDLINE):
        options["log_file"] = ""
    if options["log_file"] is None:
        options["log_file"] = logs.default_log_file()
    config = ServerConfig(commands=config, auth_token=token, auth_token_file=auth_token_file,
                          **{k: v if v != "" else None for k, v in options.items()})
    # With --workers, each process would rotate on its own: logrotate and SIGHUP instead.
    max_bytes = config.log_max_size if workers == 1 else 0
    try:
        logs.setup_logging(config.log_file, max_bytes=max_bytes, keep=config.log_keep)
        logs.use_json_lines(config.log_format == "json")
    except OSError as exc:
        raise click.BadParameter("cannot open %s: %s" % (config.log_file, exc.strerror),
                                 param_hint="--log-file") from None
    if config.audit_log:
        _check_appendable(config.audit_log, "--audit-log")
    logs.log("Log opened.")
    if (token is not None and not config.unix and not config.tls_cert
            and not is_loopback(config.host)):
        logs.log("Warning: serving %s with a token but without TLS: the token crosses the "
                 "network in clear text" % config.host, level="warning")
    if workers > 1 and config.log_file and config.log_max_size:
        logs.log("Log rotation by size is off with --workers; rotate with logrotate and "
                 "SIGHUP")
    # Before the engine is imported: Twisted's import consumes systemd's LISTEN_* variables.
    listener = _activated(ctx, config, workers)
    run = _engine(engine)
    if workers > 1:
        from .workers import run_workers

        run = functools.partial(run_workers, count=workers, engine=engine)
    elif listener is not None:
        run = functools.partial(run, listener=listener)
    try:
        run(config)
    except BindError as exc:
        click.echo("greencmd: %s" % exc, err=True)
        sys.exit(EXIT_CANNOT_BIND)


def _activated(ctx: click.Context, config: ServerConfig, workers: int):
    """The listening socket systemd passed (socket activation), or None; exit 2 on a mismatch."""
    from ..core.systemd import activated_listener

    explicit = {name for name in ("host", "port", "unix")
                if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    try:
        listener = activated_listener(config, explicit)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if listener is not None and workers > 1:
        raise click.UsageError("--workers does not take sockets from systemd: run one "
                               "server per socket unit, or bind the port yourself")
    return listener


def _metrics_address(text: str | None, protected: bool) -> tuple[str, int] | None:
    """``--metrics HOST:PORT`` as (host, port); exit 2 if malformed, or public and unprotected."""
    if not text:
        return None
    try:
        target = parse_target(text, 0)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics") from None
    if not target.port:
        raise click.BadParameter("%r has no port: give HOST:PORT" % text, param_hint="--metrics")
    if not protected and not is_loopback(target.host):
        raise click.UsageError("refusing to serve metrics on %s without --auth-token-file "
                               "(pass --no-auth to let anyone who can connect read them)"
                               % target.host)
    return target.host, target.port


def _check_appendable(path: str, option: str) -> None:
    """Exit 2 with one sentence unless ``path`` can be opened for appending."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise click.BadParameter("cannot open %s: %s" % (path, describe_os_error(exc)),
                                 param_hint=option) from None


def _check_tls(cert: str | None, key: str | None, client_ca: str | None) -> None:
    """Both of --tls-cert and --tls-key or neither, and files that load; else exit 2."""
    if bool(cert) != bool(key):
        raise click.UsageError("--tls-cert and --tls-key go together: give both or neither")
    if client_ca and not cert:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if cert:
        from ..core.tls import server_context

        try:
            server_context(cert, key, client_ca)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tls-cert") from None


def _token(path: str | None, host: str, no_auth: bool) -> bytes | None:
    """The auth token, or None; refuses (exit 2) a bad token file or an open non-loopback host."""
    if path:
        try:
            return read_token_file(path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--auth-token-file") from None
    if not no_auth and not is_loopback(host):
        raise click.UsageError("refusing to serve %s without --auth-token-file (pass --no-auth "
                               "to serve anyone who can connect)" % host)
    return None


def _engine(name: str):
    """The chosen engine's ``run(config)``, imported only now."""
    if name == "twisted":
        from ..twisted_engine import TwistedMissing, load_run

        try:
            return load_run()
        except TwistedMissing as exc:
            raise click.UsageError(str(exc)) from None
    if name == "asyncio":
        from ..asyncio_engine.server import run

        return run
    from ..gevent_engine.server import run

    return run


@cli.command(name="client")
@_option("--host", "hosts", multiple=True, default=[protocol.DEFAULT_HOST],
         help="Server to connect to; give it more than once to ask several servers at "
              "once (HOST, HOST:PORT or [IPV6]:PORT).")
@_server_port
@click.option("--timeout", default=10.0, type=click.FloatRange(0, min_open=True),
              show_default=True, help="Seconds to wait for the connection and for each reply.")
@click.option("--unix", default=None, type=click.Path(dir_okay=False),
              help="Connect to this Unix socket instead of --host/--port.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Send 'auth TOKEN' first, with the token on this file's first line "
                   "(or GREENCMD_TOKEN, which holds the token itself, not a file name).")
@click.option("--tls", is_flag=True,
              help="Speak TLS; verify the server's certificate against the system's CAs "
                   "and its host name.")
@_client_tls_files
@click.option("--hosts-file", default=None, type=click.Path(dir_okay=False),
              help="More servers, one HOST, HOST:PORT or [IPV6]:PORT per line, optionally "
                   "in [group] sections with [group:vars] settings (tls, cafile, cert, key, "
                   "token-file, timeout) and settings after a host; '#' starts a comment.")
@click.option("--group", "groups", multiple=True,
              help="Only the servers of this [group] of the --hosts-file (repeatable).")
@click.option("--parallel", default=32, type=click.IntRange(1), show_default=True,
              help="With several servers: how many are asked at once.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per server per line (host, port, exit, reply, error, "
                   "seconds), with one server too.")
@click.option("--gather", is_flag=True,
              help="Print each distinct reply once, under the servers that gave it (their "
                   "names folded into ranges), error replies and unreachable servers last.")
@click.argument("command", nargs=-1)
@click.pass_context
def client_command(ctx: click.Context, hosts: tuple[str, ...], port: int, timeout: float,
                   unix: str | None, token_file: str | None, tls: bool, cafile: str | None,
                   cert: str | None, key: str | None, hosts_file: str | None,
                   groups: tuple[str, ...], parallel: int, as_json: bool, gather: bool,
                   command: tuple[str, ...]) -> None:
    """Send COMMAND and print the reply; with no COMMAND, act like netcat on stdin.

    ``follow [N]`` prints lines as they come, until Ctrl-C stops it cleanly.
    With several servers (--host more than once, --hosts-file), each line is
    prefixed with its server's name and a summary goes to stderr.

    Exit status: 0 for a normal reply, 1 for an error reply, 3 when a server
    cannot be reached or a reply times out, 2 for bad usage.
    """
    line = " ".join(command)
    if "\n" in line or "\r" in line:
        raise click.UsageError("COMMAND must be one line; it contains a line break.")
    token = _client_token(token_file)
    context = _client_tls(tls, cafile, cert, key)
    out = click.get_binary_stream("stdout")
    if hosts_file and ctx.get_parameter_source("hosts") == ParameterSource.DEFAULT:
        hosts = ()  # the file names the servers; the default host is not one of them
    if (as_json or gather) and unix:
        raise click.UsageError("--json and --gather are for servers named by --host or "
                               "--hosts-file, not --unix")
    if as_json and gather:
        raise click.UsageError("--json and --gather do not go together: choose one")
    if gather and client.is_follow(os.fsencode(line)):
        raise click.UsageError("--gather does not apply to follow, whose lines never end")
    # One host with --json prints the fleet's object, so scripts read one format.
    if groups and not hosts_file:
        raise click.UsageError("--group picks groups of a --hosts-file: give one")
    if len(hosts) > 1 or hosts_file or as_json or gather:
        tls_files = (cafile, cert, key) if context is not None else None
        sys.exit(_fleet(hosts, hosts_file, groups, port, timeout, parallel, token, tls_files,
                        os.fsencode(line), as_json, gather, out))
    try:
        target = parse_target(hosts[0], port)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None
    endpoint = client.Endpoint(target.host, target.port, unix, context)
    try:
        if command and client.is_follow(os.fsencode(line)):
            status = client.follow(endpoint, timeout, os.fsencode(line), out, token)
        elif command:
            status = client.request(endpoint, timeout, os.fsencode(line), out, token)
        else:
            status = client.interact(endpoint, timeout, sys.stdin.fileno(), out, token)
    except client.ClientError as exc:
        click.echo("greencmd: %s" % exc, err=True)
        status = client.UNREACHABLE
    except client.Refused as exc:
        click.echo("greencmd: %s" % exc, err=True)
        status = client.FAILED
    sys.exit(status)


def _fleet(hosts: tuple[str, ...], hosts_file: str | None, groups: tuple[str, ...],
           port: int, timeout: float, parallel: int, token: bytes | None,
           tls_files: tuple | None, line: bytes, as_json: bool, gather: bool, out) -> int:
    """The client for many servers (greencmd.client.fleet); returns the exit status."""
    from ..client import fleet

    if not line:
        raise click.UsageError("with more than one server, give the COMMAND on the command "
                               "line (requests from stdin go to one server only)")
    try:
        found = fleet.profiles(targets(hosts, hosts_file, port, groups), tls_files, token,
                               timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host/--hosts-file") from None
    if not found:
        raise click.UsageError("no servers: the hosts file names none")
    return fleet.run(found, line, parallel, out, sys.stderr, as_json, gather)


def _client_tls(tls: bool, cafile: str | None, cert: str | None, key: str | None):
    """The client's TLS context, or None without --tls/--cafile/--cert; exit 2 if unusable."""
    if not (tls or cafile or cert or key):
        return None
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together: give both or neither")
    from ..core.tls import client_context, describe_tls_error

    try:
        return client_context(cafile, cert, key)
    except (OSError, ValueError) as exc:
        raise click.BadParameter("cannot load %s: %s" % (
            cafile if cafile and not cert else cert, describe_tls_error(exc)),
            param_hint="--cafile/--cert") from None


def _client_token(path: str | None) -> bytes | None:
    """The token from --token-file, else GREENCMD_TOKEN, else None; exit 2 if unusable."""
    if path:
        try:
            return read_token_file(path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--token-file") from None
    token = os.environ.get("GREENCMD_TOKEN", "").strip()
    return os.fsencode(token) if token else None


def _pair_names() -> list[str]:
    from .compare.pairs import PAIRS

    return [pair.name for pair in PAIRS]


@cli.command()
@click.argument("name", required=False, metavar="[NAME]",
                type=click.Choice(_pair_names(), case_sensitive=False))
@click.option("--width", type=click.IntRange(40), default=None,
              help="Columns to fit (default: the terminal's width).")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False),
              help="Write one self-contained HTML page of the pairs to this file instead.")
def compare(name: str | None, width: int | None, html_file: str | None) -> None:  # noqa: D103
    """Show each engine's code for the same job, side by side.

    NAME picks one pair, in any case; without it, every pair is shown. The pairs:

    \b
    {names}

    Side by side when the width holds every side's longest line, otherwise one
    side above the other: no line is ever cut. Works without Twisted: the
    source is read as text.
    """
    from .compare.pairs import PAIRS
    from .compare.render import render_pair

    chosen = [pair for pair in PAIRS if name in (None, pair.name)]
    if html_file:
        from .compare.html import write_page

        try:
            write_page(chosen, html_file)
        except OSError as exc:
            raise click.BadParameter("cannot write %s: %s" % (html_file, describe_os_error(exc)),
                                     param_hint="--html") from None
        return
    width = width or shutil.get_terminal_size((120, 24)).columns
    click.echo("\n\n".join(render_pair(pair, width) for pair in chosen))


# \b keeps click from folding the list, so that no name is cut at its hyphen.
compare.help = compare.help.format(names=textwrap.fill(
    ", ".join(_pair_names()) + ".", 70, break_on_hyphens=False,
    subsequent_indent="    "))


@cli.command()
@click.option("--host", default=protocol.DEFAULT_HOST, show_default=True,
              help="The server to load.")
@_server_port
@click.argument("scenarios", nargs=-1,
                type=click.Choice(["unknown", "pipeline", "churn", "comhash", "lastlog",
                                   "idle"]))
@click.option("--connections", "-c", default=50, type=click.IntRange(1), show_default=True,
              help="Connections (unknown, churn), or clients (comhash, lastlog).")
@click.option("--seconds", "-s", default=5.0, type=click.FloatRange(0.1), show_default=True,
              help="How long each scenario runs.")
@click.option("--rate", default=None, type=click.FloatRange(1), metavar="N",
              help="churn: start N connections per second (at most --connections at once) "
                   "instead of each as the last ends, so servers are compared at equal load.")
@click.option("--busy-poll", is_flag=True,
              help="churn: poll without ever sleeping, so that a server on the same host "
                   "is not charged for waking this process at each close (loopback).")
@click.option("--lines", default=10000, type=click.IntRange(1), show_default=True,
              help="Lines per write in the pipeline scenario.")
@click.option("--size-mib", default=64, type=click.IntRange(1), show_default=True,
              help="Size of the file the comhash scenario creates and hashes.")
@click.option("--directory", default=None, type=click.Path(file_okay=False, exists=True),
              help="Where the comhash file is made (the server must be able to read it).")
@click.option("--idle", default=5000, type=click.IntRange(1), show_default=True,
              help="Idle sessions the idle scenario holds open.")
@click.option("--server-pid", default=None, type=int,
              help="The server's PID: adds its CPU per operation (from /proc) to every "
                   "scenario, and its memory per session to idle.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Authenticate each connection with the token on this file's first line "
                   "(or GREENCMD_TOKEN, which holds the token itself). churn sends no token: "
                   "its exit needs none.")
@click.option("--tls", is_flag=True, help="Speak TLS, verifying the server against the "
              "system's CAs (churn, which measures plain TCP connects, is left out).")
@_client_tls_files
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(host: str, port: int, scenarios: tuple[str, ...], as_json: bool,
          token_file: str | None, tls: bool, cafile: str | None, cert: str | None,
          key: str | None, **options: object) -> None:
    """Load a greencmd server and check every reply; SCENARIOS default to all but idle.

    Exit status 1 if any reply was wrong (or the token was refused), 3 if the server
    cannot be reached (or its TLS handshake fails).
    """
    import json
    import ssl
    from types import SimpleNamespace

    from ..core.tls import client_tls_failure
    from . import bench as loadgen

    context = _client_tls(tls, cafile, cert, key)
    if context is not None and "churn" in scenarios:
        raise click.UsageError("churn measures plain TCP connects; leave it out with TLS")
    defaults = [name for name in loadgen.DEFAULT_SCENARIOS
                if context is None or name != "churn"]
    settings = SimpleNamespace(token=_client_token(token_file), tls=context, **options)
    results = []
    for name in scenarios or defaults:
        try:
            results.append(loadgen.run_scenario(name, (host, port), settings))
        except client.Refused as exc:
            click.echo("greencmd: %s: the server refused the token: %s" % (name, exc), err=True)
            sys.exit(client.FAILED)
        except ssl.SSLError as exc:
            click.echo("greencmd: %s: TLS with %s:%d failed: %s" % (
                name, host, port, client_tls_failure(exc)), err=True)
            sys.exit(client.UNREACHABLE)
        except OSError as exc:
            click.echo("greencmd: %s: cannot reach %s:%d: %s" % (
                name, host, port, describe_os_error(exc)), err=True)
            sys.exit(client.UNREACHABLE)
    if as_json:
        click.echo(json.dumps(loadgen.as_json(results), indent=2))
    else:
        click.echo(loadgen.format_table(results))
    sys.exit(1 if any(r.errors for r in results) else 0)


def main() -> None:
    """Entry point of the ``greencmd`` console script and ``python -m greencmd``."""
    cli(prog_name="greencmd")
