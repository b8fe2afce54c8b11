"""The floor under greencmd's gevent engine: the plainest gevent server, same commands.

    python benchmarks/floor.py [--port 0] [--lastlog-file FILE] [--threads N]
                               [--spec [--quiet] [--log-file FILE]]
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
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys

from gevent.server import StreamServer
from gevent.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greencmd.core import logs, protocol  # noqa: E402
from greencmd.core.hashing import hash_file  # noqa: E402
from greencmd.core.logtail import TAIL  # noqa: E402
from greencmd.core.programs import AT_ONCE  # noqa: E402
from greencmd.core.settings import REFUSING, ServerConfig  # noqa: E402
from greencmd.gevent_engine.bounded import BoundedServer  # noqa: E402
from greencmd.gevent_engine.server import configure_gevent, start_log_flushing  # noqa: E402

#: As many threads as greencmd runs children at once.
THREADS = AT_ONCE


def tail(path: str, count: bytes) -> bytes:
    """``tail -n COUNT -- PATH``'s output, run by the stdlib on this thread (``tail``
    found on PATH once, as greencmd finds it)."""
    argv = [TAIL, "-n", (count or b"%d" % protocol.LASTLOG_DEFAULT_LINES).decode(), "--", path]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True).stdout


def serve(port: int, lastlog_file: str, threads: int, spec: bool = False,
          quiet: bool = False, log_file: str | None = None, max_clients: int = 10) -> None:
    """Answer every connection until killed (with ``spec``, logged and bounded)."""
    configure_gevent()  # gevent configured as greencmd configures it: code is compared
    pool = ThreadPool(threads)
    numbers = itertools.count()

    def answer(line: bytes) -> bytes | None:
        word, _, arg = line.strip().partition(b" ")
        if word == b"help":
            return protocol.HELP
        if word == b"lastlog":
            return protocol.lastlog_reply(pool.apply(tail, (lastlog_file, arg)))
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
    args = parser.parse_args()
    serve(args.port, args.lastlog_file, args.threads, args.spec, args.quiet, args.log_file,
          args.max_clients)


if __name__ == "__main__":
    main()
