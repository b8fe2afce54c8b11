"""What a flood of connections leaves a server holding: descriptors and memory.

    python benchmarks/flood.py [--engines gevent twisted asyncio] [--connections 3000]
                               [--max-clients 10] [--wait 2]

Starts each engine (``greencmd serve --max-clients N --quiet``), opens
``--connections`` connections at once and leaves them open without a word, waits
``--wait`` seconds, and prints the server's open descriptors and resident memory.
Past its sessions and the refusals in progress a server should stop accepting, so
that the rest of the flood waits in the kernel's listen queue, not in the server
(docs/protocol.md, "Limits").
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flood(engine: str, connections: int, max_clients: int, wait: float) -> tuple[int, int]:
    """The descriptors and resident MiB of a fresh ``engine`` server after the flood."""
    env = dict(os.environ, PYTHONPATH=REPO)
    server = subprocess.Popen(
        [sys.executable, "-m", "greencmd", "serve", "--engine", engine, "--port", "0",
         "--max-clients", str(max_clients), "--quiet", "--log-file", "",
         "--lastlog-file", os.devnull], stdout=subprocess.PIPE, env=env)
    try:
        for line in server.stdout:
            if b"starting on" in line:
                port = int(line.rsplit(b":", 1)[1])
                break
        threading.Thread(target=server.stdout.read, daemon=True).start()
        clients = []
        for _ in range(connections):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            clients.append(sock)
        time.sleep(wait)
        descriptors = len(os.listdir("/proc/%d/fd" % server.pid))
        with open("/proc/%d/status" % server.pid) as status:
            rss = int(status.read().split("VmRSS:")[1].split()[0]) // 1024
        for sock in clients:
            sock.close()
        return descriptors, rss
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    """Flood each engine in turn and print what it holds."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", nargs="*", default=["gevent", "twisted", "asyncio"])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--max-clients", type=int, default=10)
    parser.add_argument("--wait", type=float, default=2.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1000), hard))
    print("%d connections held open, --max-clients %d, after %g s"
          % (args.connections, args.max_clients, args.wait))
    for engine in args.engines:
        descriptors, rss = flood(engine, args.connections, args.max_clients, args.wait)
        print("%-8s %5d descriptors  %4d MiB resident" % (engine, descriptors, rss))


if __name__ == "__main__":
    main()
