"""What ``greencmd compare`` shows: gevent code beside its Deferred-chain twin.

Pairs name functions and classes by file and qualified name; their source is
read as text from this package (``ast``, no import), so it can never drift from
the code that runs, and Twisted need not be installed to read it.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from functools import cache
from pathlib import Path
from typing import NamedTuple

__all__ = ["Side", "Pair", "PAIRS", "CUT", "source_of", "render_pair"]

PACKAGE = Path(__file__).resolve().parent.parent


class Side(NamedTuple):
    """Code on one side of a pair: a file of the package and qualified names in it."""

    path: str
    names: tuple[str, ...]


class Pair(NamedTuple):
    """One comparison: what both sides do, and where each side's code is."""

    name: str
    what: str
    gevent: Side
    twisted: Side


_SERVER, _SESSION, _CONNECTION, _COMMANDS = ("server.py", "session.py", "connection.py",
                                              "commands.py")
_CHILDREN, _FOLLOW = "children.py", "follow.py"
_TWIN, _PAGE, _PAGE_TWIN = ("compare/twisted_server.py", "compare/getpage.py",
                            "compare/getpage_twisted.py")

PAIRS = [
    Pair("session", "The session loop. Read a line, run the command, write the reply.",
         Side(_SESSION, ("Session.serve", "Session.run_command")),
         Side(_TWIN, ("CmdSession.dataReceived", "CmdSession.lineReceived"))),
    Pair("ordering", "Replies in request order. One command at a time per connection.",
         Side(_CONNECTION, ("Connection.write", "Connection.flush")),
         Side(_TWIN, ("CmdSession.wait_for", "CmdSession.deliver"))),
    Pair("lastlog", "Run tail, collect its output, kill it if it takes too long.",
         Side(_COMMANDS, ("lastlog",)),
         Side(_TWIN, ("CmdSession.lastlog", "CmdSession.lastlog_done",
                      "CmdSession.child_failed"))),
    Pair("children", "A child process: read stdout and stderr, time out, kill it and all it "
         "started.",
         Side(_CHILDREN, ("run", "read_capped", "read_last", "kill_group", "kill_and_reap")),
         Side(_TWIN, ("spawn_child", "SessionChild", "ChildProtocol"))),
    Pair("follow", "Follow the log. Stream tail -F to the client until a line stops it; "
         "a client that stops reading stalls only its own follow.",
         Side(_FOLLOW, ("follow", "wait_for_stop")),
         Side(_TWIN, ("CmdSession.follow", "CmdSession.follow_ended", "CmdSession.end_follow",
                      "CmdSession.pauseProducing", "CmdSession.resumeProducing",
                      "CmdSession.stalled", "FollowProtocol"))),
    Pair("plugin", "A plugin command: call a Python function, turn an exception into an error "
         "line.",
         Side(_COMMANDS, ("plugin",)),
         Side(_TWIN, ("CmdSession.plugin", "CmdSession.plugin_failed"))),
    Pair("auth", "auth TOKEN first: a local flag in the loop, or an attribute every callback "
         "checks.",
         Side(_SESSION, ("Session.serve",)),
         Side(_TWIN, ("CmdSession.lineReceived", "CmdSession.authenticate"))),
    Pair("tls", "TLS: a handshake bounded to 10 seconds, one log line when it fails.",
         Side(_SERVER, ("CommandServer.handle", "tls_context", "tls_handshake")),
         Side(_TWIN, ("tls_options", "listen", "CmdSession.handshakeCompleted",
                      "CmdSession.handshake_late", "CmdSession.handshake_failed"))),
    Pair("comhash", "Hash a file on a thread while other sessions go on.",
         Side(_COMMANDS, ("comhash",)),
         Side(_TWIN, ("CmdSession.comhash", "CmdSession.hash_done",
                      "CmdSession.hash_failed"))),
    Pair("timeout", "The idle timeout. Close a session that sends no complete line.",
         Side(_SERVER, ("CommandServer._reap_idle_sessions",)),
         Side(_TWIN, ("CmdSession.restart_idle_clock", "CmdSession.stop_idle_clock",
                      "CmdSession.idle_check"))),
    Pair("errors", "Error paths. A client that resets mid-command, a command that fails.",
         Side(_SESSION, ("Session.run", "watched_for_reset", "kill_on_reset")),
         Side(_TWIN, ("CmdSession.connectionLost", "CmdSession.command_failed"))),
    Pair("shutdown", "Shutdown. Stop listening, let commands finish, say bye to everyone.",
         Side(_SERVER, ("CommandServer.shutdown",)),
         Side(_TWIN, ("CmdFactory.shutdown",))),
    Pair("getpage-print", "getPage lesson 1. Fetch a page and print it (one callback).",
         Side(_PAGE, ("fetch", "print_page")),
         Side(_PAGE_TWIN, ("get_page", "print_page"))),
    Pair("getpage-lower", "getPage lesson 2. Lower-case the page, then print it (two "
         "chained callbacks).",
         Side(_PAGE, ("lower_page",)),
         Side(_PAGE_TWIN, ("lower_page",))),
    Pair("getpage-missing", "getPage lesson 3. A page that is not there (an errback).",
         Side(_PAGE, ("missing_page",)),
         Side(_PAGE_TWIN, ("missing_page",))),
]


@cache
def _tree(path: str) -> tuple[list[str], ast.Module]:
    text = (PACKAGE / path).read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def source_of(side: Side) -> list[str]:
    """The source lines of every name of ``side``, a blank line between them."""
    lines, tree = _tree(side.path)
    out: list[str] = []
    for name in side.names:
        node = _find(tree, name.split("."), side.path)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if out:
            out.append("")
        out += textwrap.dedent("\n".join(lines[first - 1:node.end_lineno])).splitlines()
    return out


def _find(scope: ast.AST, parts: list[str], path: str) -> ast.AST:
    for node in ast.iter_child_nodes(scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == parts[0]:
            return node if len(parts) == 1 else _find(node, parts[1:], path)
    raise LookupError("%s has no %s" % (path, ".".join(parts)))


#: Ends a piece of a line that is too long for its column even on its own.
CUT = "\u2026"


def _wrap(lines: list[str], width: int) -> list[str]:
    """Fold lines longer than ``width`` at spaces, with a hanging indent.

    A word is never split: one longer than the column on its own is shown cut,
    ending in :data:`CUT`.
    """
    out = []
    for line in lines:
        line = line.expandtabs()
        if len(line) <= width:
            out.append(line)
            continue
        indent = min(len(line) - len(line.lstrip()), width // 2)
        pieces = textwrap.wrap(line.lstrip(), width, initial_indent=" " * indent,
                               subsequent_indent=" " * min(indent + 4, width // 2),
                               break_long_words=False, break_on_hyphens=False)
        out += [p if len(p) <= width else p[:width - 1] + CUT for p in pieces]
    return out


def render_pair(pair: Pair, width: int) -> str:
    """The pair as two columns that fit ``width``, with what they do above."""
    column = max(20, (width - 3) // 2)
    left = _wrap(["gevent: %s" % pair.gevent.path, ""] + source_of(pair.gevent), column)
    right = _wrap(["Twisted: %s" % pair.twisted.path, ""] + source_of(pair.twisted), column)
    rows = ["%-*s | %s" % (column, a, b)
            for a, b in itertools.zip_longest(left, right, fillvalue="")]
    rule = "=" * min(width, column * 2 + 3)
    title = textwrap.wrap("[%s] %s" % (pair.name, pair.what), len(rule))
    return "\n".join([rule, *title, rule] + [row.rstrip() for row in rows])
