"""What ``greencmd compare`` shows: each engine's code for one job, read from the source.

A pair names, for each engine, a module of its package and the functions or
classes in it that do the job; mostly the module of the same name. The source
is read as text (``ast``, no import), so it can never drift from the code
that runs, and Twisted need not be installed to read it. Docstrings are cut
to their first line: the pair compares code, not prose.
"""

from __future__ import annotations

import ast
import textwrap
from functools import cache
from pathlib import Path
from typing import NamedTuple

__all__ = ["Part", "Side", "Pair", "PAIRS", "source_of", "line_count", "find_pair"]

PACKAGE = Path(__file__).resolve().parent.parent.parent


class Part(NamedTuple):
    """Names in one module of the package (``gevent_engine/session.py``)."""

    path: str
    names: tuple[str, ...]


class Side(NamedTuple):
    """One engine's code for a pair: its label and the parts that do the job."""

    engine: str
    parts: tuple[Part, ...]

    @property
    def where(self) -> str:
        """The modules, as a heading shows them."""
        return ", ".join(dict.fromkeys(part.path for part in self.parts))


class Pair(NamedTuple):
    """One comparison: what every side does, what a style costs here, and the code."""

    name: str
    what: str
    cost: str
    sides: tuple[Side, ...]


def _engines(module: str, gevent_names: tuple[str, ...], twisted_names: tuple[str, ...],
             asyncio_names: tuple[str, ...], **more: tuple[Part, ...]) -> tuple[Side, ...]:
    """The sides of a pair whose code sits in ``module`` of each engine's package.

    ``more``: further parts, by engine (``gevent=``, ``twisted=``, ``asyncio=``),
    from other modules.
    """
    def side(label: str, names: tuple[str, ...]) -> Side:
        engine = label.lower()
        return Side(label, (Part("%s_engine/%s" % (engine, module), names),)
                    + more.get(engine, ()))

    return (side("gevent", gevent_names), side("Twisted", twisted_names),
            side("asyncio", asyncio_names))


_PAGE, _PAGE_TWIN = "tools/compare/getpage.py", "tools/compare/getpage_twisted.py"

PAIRS = [
    Pair("session", "The session: read a line, run the command, write the reply; one command "
         "at a time, replies in order, auth first.", "",
         _engines("session.py", ("Session.serve", "Session.run_command"),
                  ("CommandSession.dataReceived", "CommandSession.lineReceived",
                   "CommandSession.authenticate", "CommandSession.wait_for",
                   "CommandSession.command_failed", "CommandSession.deliver",
                   "CommandSession.hold", "CommandSession.go_on"),
                  ("Session.serve", "Session.run_command"))),
    Pair("errors", "Error paths: every way a session ends, and a client that resets while "
         "a command waits.",
         "gevent costs more here: a watcher greenlet per waiting command notices a reset, "
         "which Twisted's reactor reports by itself (connectionLost); asyncio needs a "
         "watcher task too (until_reset).",
         _engines("session.py", ("Session.run", "watch_for_reset", "kill_on_reset"),
                  ("CommandSession.connectionLost", "CommandSession.readConnectionLost",
                   "CommandSession.finish_at_eof"),
                  ("Session.run", "until_reset"))),
    Pair("timeout", "The idle timeout: close a session that sends no complete line in time.",
         "gevent costs more here: one reaper greenlet that kills idle sessions, where Twisted "
         "has TimeoutMixin (setTimeout, resetTimeout, timeoutConnection) and asyncio a "
         "wait_for on each read, against one deadline per line.",
         (Side("gevent", (Part("gevent_engine/server.py",
                               ("CommandServer._reap_idle_sessions",)),)),
          Side("Twisted", (Part("twisted_engine/session.py",
                                ("CommandSession.timeoutConnection",)),)),
          Side("asyncio", (Part("asyncio_engine/connection.py",
                                ("Connection.receive",)),)))),
    Pair("lastlog", "lastlog: run tail, frame its output, stop it if it takes too long.", "",
         _engines("commands.py", ("lastlog",), ("lastlog", "lastlog_failed"), ("lastlog",))),
    Pair("programs", "A configured command: run its program, frame its output or say why "
         "it failed.", "",
         _engines("commands.py", ("program",), ("program", "program_failed"), ("program",))),
    Pair("comhash", "comhash: hash a file on a thread while other sessions go on; stop "
         "the thread when nobody waits.", "",
         _engines("commands.py", ("comhash",), ("comhash", "stop_hashing"),
                  ("comhash", "ServerState.in_thread"))),
    Pair("plugin", "A plugin command: call a Python function, turn an exception into an "
         "error line.", "",
         _engines("commands.py", ("plugin",), ("plugin", "plugin_failed"), ("plugin",))),
    Pair("processes", "A child process: read stdout and stderr, time out, kill it and all it "
         "started, reap it.",
         "gevent costs more here: its engine spawns through fast_subprocess (shown), which "
         "overrides a private stdlib method and uses loop internals; gevent.subprocess "
         "alone reads plainer but spawns 3x slower. A configured program's two pipes are "
         "read by a greenlet each (about 25 µs per greenlet: its start, a fresh 16 KiB "
         "frame chunk on CPython 3.11+, its switches); lastlog's tail, which can neither "
         "fill stderr nor leave a process behind, has both read in turn by the session's "
         "own greenlet (run_tail), as asyncio's coroutine reads them without gather's "
         "tasks. With that, and children in a process group of their own rather than a "
         "session (a session costs a scheduler autogroup per child), lastlog costs 0.85 "
         "to 0.94 of the plain floor's CPU (docs/performance.md). "
         "asyncio's Process.wait() also waits "
         "for the child's pipes, so the exit is awaited on a pidfd there too, and asyncio "
         "frees pipes only at their end, so a child stopped early has them read to it.",
         _engines("processes.py", ("run", "_run", "run_tail", "_finished", "read_capped",
                                   "read_last", "kill_group", "kill_and_reap", "_clean_up"),
                  ("spawn", "SessionChild", "ChildProtocol", "run", "_run"),
                  ("start", "run", "run_tail", "_run", "_complete", "_in_turn", "_exit", "exited",
                   "read_capped", "read_last", "drain", "read_to_end", "kill_group"),
                  gevent=(Part("gevent_engine/fast_subprocess.py", ("Popen", "Pipe")),))),
    Pair("follow", "follow: stream tail -F to the client until a line stops it; a client "
         "that stops reading stalls only its own follow.", "",
         _engines("follow.py", ("follow", "wait_for_stop"),
                  ("FollowProtocol", "StallWatch", "follow", "begin"),
                  ("follow", "wait_for_stop"),
                  twisted=(Part("twisted_engine/session.py",
                                ("CommandSession.start_follow", "CommandSession.follow_began",
                                 "CommandSession.follow_ended",
                                 "CommandSession.end_follow")),))),
    Pair("tls", "TLS: a handshake bounded to 10 seconds, one log line when it fails; "
         "SIGHUP loads a renewed certificate for new connections.", "",
         _engines("tls.py", ("tls_context", "tls_handshake"),
                  ("tls_options", "ReloadableTLS", "with_tls"),
                  ("tls_context", "tls_handshake"),
                  gevent=(Part("gevent_engine/server.py", ("CommandServer.reopen_files",)),),
                  twisted=(Part("twisted_engine/session.py",
                                ("CommandSession.handshakeCompleted",
                                 "CommandSession.handshake_late")),
                           Part("twisted_engine/server.py",
                                ("CommandFactory.reopen_files",))),
                  asyncio=(Part("asyncio_engine/server.py",
                                ("CommandServer.reopen_files",)),))),
    Pair("limits", "Max clients: refuse the client past the limit at once; past the sessions "
         "and the refusals in progress, stop accepting, so a flood waits in the kernel.",
         "gevent costs more here: its own way is one line, spawn=Pool(n), but the engine "
         "uses BoundedServer (shown), the same bound for 9 percent fewer instructions per "
         "short connection. asyncio costs more too: start_server has no way to stop "
         "accepting, so the engine accepts in a loop of its own (sock_accept), 5 percent "
         "more CPU per short connection. Twisted stops reading at the bound but accepts "
         "in batches, so it may take a batch more.",
         _engines("server.py", ("CommandServer.serve_session",),
                  ("CommandFactory.connection_opened", "CommandFactory.connection_closed",
                   "CommandFactory.is_full"),
                  ("CommandServer.accept", "CommandServer.serve_session",
                   "accepted_streams"),
                  gevent=(Part("gevent_engine/bounded.py",
                               ("BoundedServer.full", "BoundedServer._spawn_counted",
                                "BoundedServer.do_close")),),
                  twisted=(Part("twisted_engine/session.py",
                                ("CommandSession.connectionMade",)),))),
    Pair("shutdown", "Shutdown: stop listening, let commands finish for the grace, say bye "
         "to everyone.",
         "gevent costs more here: killing greenlets needs care that a reply is never cut "
         "(a kill can land inside sendall); Twisted cancels Deferreds and asyncio cancels "
         "tasks, and both transports hold whole replies.",
         _engines("server.py", ("CommandServer.shutdown",),
                  ("CommandFactory.shutdown", "finished", "settled_within"),
                  ("CommandServer.shutdown",))),
    Pair("getpage-print", "getPage lesson 1: fetch a page and print it (one callback).", "",
         (Side("gevent", (Part(_PAGE, ("fetch", "print_page")),)),
          Side("Twisted", (Part(_PAGE_TWIN, ("get_page", "print_page")),)))),
    Pair("getpage-lower", "getPage lesson 2: lower-case the page, then print it (two "
         "chained callbacks).", "",
         (Side("gevent", (Part(_PAGE, ("lower_page",)),)),
          Side("Twisted", (Part(_PAGE_TWIN, ("lower_page",)),)))),
    Pair("getpage-missing", "getPage lesson 3: a page that is not there (an errback).", "",
         (Side("gevent", (Part(_PAGE, ("missing_page",)),)),
          Side("Twisted", (Part(_PAGE_TWIN, ("missing_page",)),)))),
]


def find_pair(name: str) -> Pair:
    """The pair called ``name``, in any case; raises LookupError."""
    for pair in PAIRS:
        if pair.name == name.lower():
            return pair
    raise LookupError(name)


@cache
def _tree(path: str) -> tuple[list[str], ast.Module]:
    text = (PACKAGE / path).read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text)


def source_of(side: Side) -> list[str]:
    """The source lines of every name of ``side``, docstrings cut to their first line."""
    out: list[str] = []
    for part in side.parts:
        lines, tree = _tree(part.path)
        for name in part.names:
            node = _find(tree, name.split("."), part.path)
            if out:
                out.append("")
            out += _without_docstrings(node, lines)
    return out


def line_count(side: Side) -> int:
    """Lines of code a side shows (blank lines not counted)."""
    return sum(1 for line in source_of(side) if line.strip())


def _find(scope: ast.AST, parts: list[str], path: str) -> ast.AST:
    for node in ast.iter_child_nodes(scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == parts[0]:
            return node if len(parts) == 1 else _find(node, parts[1:], path)
    raise LookupError("%s has no %s" % (path, ".".join(parts)))


def _without_docstrings(node: ast.AST, lines: list[str]) -> list[str]:
    """``node``'s source, dedented, each docstring in it down to its first line."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    cuts: dict[int, tuple[int, str]] = {}  # first line -> (last line, replacement)
    for inner in ast.walk(node):
        if not isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = inner.body[0] if inner.body else None
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):
            continue
        if doc.end_lineno == doc.lineno:
            continue
        indent = lines[doc.lineno - 1][:len(lines[doc.lineno - 1])
                                       - len(lines[doc.lineno - 1].lstrip())]
        summary = doc.value.value.strip().splitlines()[0].strip()
        cuts[doc.lineno] = (doc.end_lineno, '%s"""%s"""' % (indent, summary))
    out, number = [], first
    while number <= node.end_lineno:
        if number in cuts:
            last, replacement = cuts[number]
            out.append(replacement)
            number = last + 1
            continue
        out.append(lines[number - 1])
        number += 1
    return textwrap.dedent("\n".join(out)).splitlines()
