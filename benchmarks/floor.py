"""What the plainest gevent server costs: the floor under greencmd's gevent engine.

    python benchmarks/floor.py [--idle 5000] [--reps 3]

Starts a bare ``StreamServer`` whose handler answers every chunk it receives
in a ``recv()`` loop with greencmd's reply (``help`` or ``Command not found.``:
no framing, no timeouts, no log), pinned to CPU 0, and runs ``greencmd bench`` against it
pinned to CPU 1, as ``benchmarks/compare.py`` does for greencmd:

- ``idle``: server memory per idle connection, one greenlet blocked in ``recv()``;
- ``unknown`` (50 connections): server CPU per reply, a greenlet switch and a
  ``recv()``/``send()`` per request.

What greencmd spends above these numbers is its own work: framing, parsing,
dispatch, limits, timeouts and the log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from compare import taskset  # the same pinning as the side-by-side runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = """
from gevent.server import StreamServer
HELP, NOT_FOUND = %r, %r

def handle(sock, address):
    while True:
        data = sock.recv(65536)
        if not data:
            break
        sock.sendall(HELP if data.startswith(b"help") else NOT_FOUND)

server = StreamServer(("127.0.0.1", 0), handle, backlog=4096)
server.start()
print(server.address[1], flush=True)
server.serve_forever()
"""


def bench(scenario: str, options: list[str]) -> dict:
    """One ``greencmd bench`` scenario against a fresh bare server; its JSON result."""
    sys.path.insert(0, REPO)
    from greencmd.core import protocol

    server = subprocess.Popen(taskset("0") + [
        sys.executable, "-c", SERVER % (protocol.HELP, protocol.COMMAND_NOT_FOUND)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = int(server.stdout.readline())
        out = subprocess.run(taskset("1") + [
            sys.executable, "-m", "greencmd", "bench", "--port", str(port), "--server-pid",
            str(server.pid), "--json", scenario, *options],
            capture_output=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
        result = json.loads(out.stdout)[0]
        if result["errors"]:
            raise SystemExit("floor.py: %s: %s" % (scenario, "; ".join(result["examples"])))
        return result
    finally:
        server.kill()
        server.wait()


def main() -> None:
    """Measure the bare server; print memory per idle connection and CPU per reply."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    idle = [bench("idle", ["--seconds", "1", "--idle", str(args.idle)])
            for _ in range(args.reps)]
    unknown = [bench("unknown", ["--seconds", str(args.seconds), "-c", "50"])
               for _ in range(args.reps)]
    print("bare StreamServer handler, median of %d:" % args.reps)
    print("  idle: %.2f KiB per idle connection" % statistics.median(
        r["extra"]["rss_kib_per_session"] for r in idle))
    print("  unknown, 50 connections: %.1f µs of server CPU per reply" % statistics.median(
        r["server_us_per_op"] for r in unknown))


if __name__ == "__main__":
    main()
