"""The floor under greencmd's gevent engine: the plainest gevent server, same commands.

    python benchmarks/floor.py [--port 0] [--lastlog-file FILE] [--threads N]
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
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from gevent.server import StreamServer
from gevent.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greencmd.core import protocol  # noqa: E402
from greencmd.core.hashing import hash_file  # noqa: E402
from greencmd.gevent_engine.processes import AT_ONCE  # noqa: E402

#: As many threads as greencmd runs children at once.
THREADS = AT_ONCE


def tail(path: str, count: bytes) -> bytes:
    """``tail -n COUNT -- PATH``'s output, run by the stdlib on this thread."""
    argv = ["tail", "-n", (count or b"%d" % protocol.LASTLOG_DEFAULT_LINES).decode(), "--", path]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True).stdout


def serve(port: int, lastlog_file: str, threads: int) -> None:
    """Answer every connection until killed."""
    pool = ThreadPool(threads)

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

    def handle(sock, address) -> None:
        pending = b""
        while data := sock.recv(65536):
            *lines, pending = (pending + data).split(b"\n")
            replies = []
            for line in lines:
                reply = answer(line)
                if reply is None:
                    sock.sendall(b"".join(replies))
                    return
                replies.append(reply)
            sock.sendall(b"".join(replies))

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
    args = parser.parse_args()
    serve(args.port, args.lastlog_file, args.threads)


if __name__ == "__main__":
    main()
