"""The floor under greencmd's gevent engine: the plainest gevent server, same commands.

    python benchmarks/floor.py [--port 0] [--lastlog-file FILE] [--threads N]
                               [--spec [--quiet] [--log-file FILE]]
                               [--children threads|guarded|greenlets]
    python benchmarks/compare.py        # measures it beside the engines: the `floor` column

One greenlet per connection (``StreamServer``), a ``recv()`` loop cut into lines,
and for each line the reply greencmd gives, byte for byte:

- ``help`` and unknown words: a constant;
- ``lastlog [N]``: the stdlib's ``subprocess.run(["tail", ...])`` on a gevent
  ``ThreadPool`` (the thread blocks, the greenlet waits for it), framed with
  greencmd's ``lastlog_reply``;
- ``comhash PATH``: greencmd's ``hash_file`` on the same pool;
- ``exit``/``quit``: the handler returns, StreamServer closes the socket.

Nothing else: no limits, no timeouts, no log, no checks of bad input, no
shutdown. What greencmd spends above this server on the same load is the cost
of what greencmd does that this does not. It prints the ``starting on`` line
the engines print, so ``compare.py`` starts it as it starts them.

``--spec`` adds only what the spec asks of any server for each connection,
done the way greencmd does it: the log's lines (connection, each request unless
``--quiet``, its end), written by greencmd's log, and a bound on the greenlets
(greencmd's ``BoundedServer``, sized as greencmd sizes it for ``--max-clients``). ``compare.py``
measures it as ``floor-spec``: what is left between it and an engine is the
cost of everything else the engine does (timeouts, limits, checks, clean ends).

``--children`` says how ``lastlog``'s ``tail`` runs: ``threads`` (the default) is
the above; ``guarded`` is the same thread doing what the spec and greencmd ask of
every child, the thread way (its own process group, killed whole once it exits, a
timeout, a cap on its output, a stop once its client is gone: a ``poll()``
loop); ``greenlets`` is the gevent engine's own ``processes.run_tail`` (both
pipes read in this greenlet, the exit awaited on a pidfd, the same guarantees;
before issue 16's tenth pass, ``processes.run``'s greenlet per pipe), and nothing else
of the engine. ``compare.py`` measures ``--spec --children guarded`` as
``floor-spec`` and ``--children greenlets`` as ``floor-greenlets``: between
``floor`` and ``floor-greenlets`` is the price of running a child the gevent
engine's way, guarantees included; between ``floor-spec`` and ``gevent``, the
price of everything the engine does that the spec does not ask.
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import subprocess
import sys
import threading
import time

from gevent.server import StreamServer
from gevent.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greencmd.core import logs, logtail, protocol  # noqa: E402
from greencmd.core.hashing import hash_file  # noqa: E402
from greencmd.core.logtail import LASTLOG_MAX_BYTES, TAIL  # noqa: E402
from greencmd.core.programs import AT_ONCE, OWN_GROUP, STDERR_KEPT, kill_process_group  # noqa: E402
from greencmd.core.settings import REFUSING, ServerConfig  # noqa: E402
from greencmd.gevent_engine import processes  # noqa: E402
from greencmd.gevent_engine.bounded import BoundedServer  # noqa: E402
from greencmd.gevent_engine.server import configure_gevent, start_log_flushing  # noqa: E402

#: As many threads as greencmd runs children at once.
THREADS = AT_ONCE


#: --command-timeout's default: the guarded and greenlet ways time a child out.
TIMEOUT = ServerConfig().command_timeout
#: How often the guarded thread looks whether its client is gone, or its child exited.
LOOK_EVERY = 0.1


def tail_argv(path: str, count: bytes) -> list[str]:
    """``tail -n COUNT -- PATH`` (``tail`` found on PATH once, as greencmd finds it)."""
    return [TAIL, "-n", (count or b"%d" % protocol.LASTLOG_DEFAULT_LINES).decode(), "--", path]


def tail(path: str, count: bytes) -> bytes:
    """``tail``'s output, run by the stdlib on this thread."""
    return subprocess.run(tail_argv(path, count), stdin=subprocess.DEVNULL,
                          capture_output=True).stdout


def tail_guarded(path: str, count: bytes, gone: threading.Event) -> bytes | None:
    """``tail``'s output, run on this thread as the spec asks; None if it timed out, went
    over the cap, or ``gone`` was set (its client left)."""
    child = subprocess.Popen(tail_argv(path, count), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             **OWN_GROUP)
    try:
        return read_both(child, time.monotonic() + TIMEOUT, gone)
    finally:
        kill_process_group(child.pid)  # all of it, or what it left running
        child.stdout.close()
        child.stderr.close()
        child.wait()


def read_both(child: subprocess.Popen, deadline: float, gone: threading.Event) -> bytes | None:
    """stdout until both pipes end (stderr's end kept), or None; the group is killed once
    the child exits, so a grandchild cannot hold the pipes."""
    poller = select.poll()
    for pipe in (child.stdout, child.stderr):
        poller.register(pipe, select.POLLIN)
    out, errors, size, open_pipes, exited = [], b"", 0, 2, False
    while open_pipes:
        if gone.is_set() or time.monotonic() > deadline:
            return None
        if not exited and child.poll() is not None:
            exited = True
            kill_process_group(child.pid)
        for fd, _ in poller.poll(LOOK_EVERY * 1000):
            data = os.read(fd, 65536)
            if not data:
                poller.unregister(fd)
                open_pipes -= 1
            elif fd == child.stderr.fileno():
                errors = (errors + data)[-STDERR_KEPT:]
            elif (size := size + len(data)) > LASTLOG_MAX_BYTES:
                return None
            else:
                out.append(data)
    return b"".join(out)


def tail_in_greenlets(path: str, count: bytes) -> bytes | None:
    """``tail``'s output as the gevent engine gets it (``processes.run_tail``, here)."""
    try:
        return processes.run_tail(tail_argv(path, count), TIMEOUT, LASTLOG_MAX_BYTES).output
    except (processes.TimedOut, processes.TooMuchOutput):
        return None


def serve(port: int, lastlog_file: str, threads: int, spec: bool = False,
          quiet: bool = False, log_file: str | None = None, max_clients: int = 10,
          children: str = "threads") -> None:
    """Answer every connection until killed (with ``spec``, logged and bounded)."""
    configure_gevent()  # gevent configured as greencmd configures it: code is compared
    pool = ThreadPool(threads)
    numbers = itertools.count()

    def lastlog(arg: bytes) -> bytes:
        if children == "threads":
            return protocol.lastlog_reply(pool.apply(tail, (lastlog_file, arg)))
        if children == "greenlets":
            output = tail_in_greenlets(lastlog_file, arg)
        else:
            gone = threading.Event()
            try:
                output = pool.apply(tail_guarded, (lastlog_file, arg, gone))
            finally:
                gone.set()
        # None (timed out, over the cap, client gone) gets the cap's words: the floor
        # answers only what the benchmark asks, and a benchmark never times out.
        return logtail.lastlog_result(lastlog_file, 0, output)

    def answer(line: bytes) -> bytes | None:
        word, _, arg = line.strip().partition(b" ")
        if word == b"help":
            return protocol.HELP
        if word == b"lastlog":
            return lastlog(arg)
        if word == b"comhash":
            return pool.apply(hash_file, (arg, None))
        if word in (b"exit", b"quit"):
            return None
        return protocol.COMMAND_NOT_FOUND

    def handle(sock, address, system: str | None = None) -> None:
        pending = b""
        while data := sock.recv(65536):
            *lines, pending = (pending + data).split(b"\n")
            replies = []
            for line in lines:
                if system is not None:
                    logs.log_request(address[0], line, system)
                reply = answer(line)
                if reply is None:
                    sock.sendall(b"".join(replies))
                    return
                replies.append(reply)
            sock.sendall(b"".join(replies))

    def handle_as_the_spec_asks(sock, address) -> None:
        logs.log_connection(address[0])
        system = logs.session_name(next(numbers), address[0])
        try:
            handle(sock, address, None if quiet else system)
        finally:
            logs.log_lost(logs.CLEAN, system)

    if spec:
        logs.setup_logging(log_file)
        start_log_flushing()
        server = BoundedServer(("127.0.0.1", port), handle_as_the_spec_asks, backlog=4096,
                               limit=max_clients + REFUSING)
    else:
        server = StreamServer(("127.0.0.1", port), handle, backlog=4096)
    server.start()
    print("floor server starting on 127.0.0.1:%d" % server.address[1], flush=True)
    server.serve_forever()


def main() -> None:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lastlog-file", default="/var/log/syslog")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--spec", action="store_true",
                        help="log the spec's lines and bound the greenlets, as greencmd does")
    parser.add_argument("--quiet", action="store_true", help="with --spec: no request lines")
    parser.add_argument("--log-file", default=None, help="with --spec: the log also goes here")
    parser.add_argument("--max-clients", type=int, default=ServerConfig().max_clients,
                        help="with --spec: the greenlets are bounded as greencmd's are")
    parser.add_argument("--children", choices=("threads", "guarded", "greenlets"),
                        default="threads",
                        help="lastlog's tail: the stdlib on a pool thread, the same with "
                             "the spec's guarantees, or the gevent engine's processes.run_tail")
    args = parser.parse_args()
    serve(args.port, args.lastlog_file, args.threads, args.spec, args.quiet, args.log_file,
          args.max_clients, args.children)


if __name__ == "__main__":
    main()
