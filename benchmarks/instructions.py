"""Instructions per connection under connection churn: a count that does not wobble.

    python benchmarks/instructions.py [--connections 2000] [--at-once 20]
                                      [--engines gevent floor floor-spec] [-- SERVE OPTIONS]

Timing figures on a shared or virtual machine move by 10 to 20 percent from one
run to the next; the number of instructions a server executes for the same
work does not (to a tenth of a percent here). Each server runs under
valgrind's callgrind (``apt install valgrind``); after a warm-up its counters
are zeroed, ``--connections`` connections each send ``exit`` and wait for the
close, ``--at-once`` at a time, and the instructions counted are divided by
them. Kernel time (system calls, page faults) is not counted: ``compare.py``
measures the whole cost, this tells where user-space instructions go. It
runs slowly (valgrind): a minute or two per engine.
"""

from __future__ import annotations

import argparse
import glob
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import start_server  # noqa: E402

WARM_UP = 300


def churn(port: int, connections: int, at_once: int) -> None:
    """``connections`` connections that send ``exit`` and wait for the close, ``at_once``
    at a time."""
    poller = select.epoll()
    live: dict[int, socket.socket] = {}
    started = 0

    def open_one() -> None:
        nonlocal started
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        live[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLOUT)
        started += 1

    for _ in range(min(at_once, connections)):
        open_one()
    while live:
        for fd, events in poller.poll(30):
            sock = live[fd]
            if events & select.EPOLLOUT:
                poller.modify(fd, select.EPOLLIN)
                sock.send(b"exit\n")
                continue
            try:
                if sock.recv(4096):
                    continue
            except OSError:
                pass
            poller.unregister(fd)
            del live[fd]
            sock.close()
            if started < connections:
                open_one()


def instructions(engine: str, options: list[str], args, workdir: str) -> float:
    """Instructions per connection of ``engine``'s server."""
    out = os.path.join(workdir, "callgrind-%s.out" % engine)
    prefix = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
    proc, port = start_server(engine, options, False, workdir, prefix)
    try:
        churn(port, WARM_UP, args.at_once)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True,
                       capture_output=True)
        churn(port, args.connections, args.at_once)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True,
                       capture_output=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    with open(dumps[-1]) as f:
        total = next(int(line.split()[1]) for line in f
                     if line.startswith(("summary:", "totals:")))
    return total / args.connections


def main() -> None:
    """Count each engine's instructions per connection; print them and their ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--at-once", type=int, default=20)
    parser.add_argument("--engines", nargs="*", default=["gevent", "floor", "floor-spec"])
    parser.add_argument("serve_options", nargs="*", help="after --: for every engine")
    args = parser.parse_args()
    # Hash randomisation changes dict layouts, and so the count, a little.
    os.environ["PYTHONHASHSEED"] = "0"
    counts = {}
    with tempfile.TemporaryDirectory(prefix="greencmd-instructions-") as workdir:
        open(os.path.join(workdir, "source.log"), "w").close()
        for engine in args.engines:
            started = time.monotonic()
            counts[engine] = instructions(engine, args.serve_options, args, workdir)
            sys.stderr.write("%s: %.0f s\n" % (engine, time.monotonic() - started))
    base = counts.get("floor")
    for engine, count in counts.items():
        ratio = " (%.2f x floor)" % (count / base) if base else ""
        print("%-11s %8.0f instructions per connection%s" % (engine, count, ratio))


if __name__ == "__main__":
    main()
