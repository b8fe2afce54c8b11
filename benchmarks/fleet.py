"""The fleet client against 200 servers: does it take as long as the slowest, or the sum?

    python benchmarks/fleet.py [--servers 200] [--seconds 0.5]

One gevent server stands in for a fleet: it listens on 0.0.0.0 (``--no-auth``), and
the hosts file names it 200 times as 127.0.0.2, 127.0.0.3, ... (distinct hosts, the
same port), so the client opens 200 separate sessions. Each runs a configured command
that sleeps ``--seconds``: a reply that takes a while, as a real host's would. The
client runs with ``--json`` for each ``--parallel`` value; the table shows the wall
time, the slowest server, and the sum of all servers' times (what asking them one
after another would cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    """Start the server, run the client at each parallelism, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.5)
    options = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=REPO)
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "fleet.toml")
        with open(config, "w") as f:
            f.write('[commands.pause]\nrun = ["sleep", "%g"]\n' % options.seconds)
        log = open(os.path.join(work, "server.log"), "w+")
        server = subprocess.Popen(
            [sys.executable, "-m", "greencmd", "serve", "--host", "0.0.0.0", "--no-auth",
             "--port", "0", "--quiet", "--log-file", "", "--max-clients", "1000",
             "--config", config], stdout=log, env=env)
        try:
            port = _port(log.name)
            hosts = os.path.join(work, "hosts")
            with open(hosts, "w") as f:
                for index in range(options.servers):
                    f.write("127.0.%d.%d:%d\n" % ((index + 2) // 256, (index + 2) % 256, port))
            print("%s, %d CPUs, Python %s; %d servers, each reply takes %g s"
                  % (platform.processor() or platform.machine(), os.cpu_count(),
                     platform.python_version(), options.servers, options.seconds))
            print("parallel  wall s  slowest s  sum s   sum/wall")
            for parallel in (options.servers, 32):
                _measure(hosts, parallel, env)
        finally:
            server.terminate()
            server.wait()


def _port(log: str) -> int:
    for _ in range(100):
        with open(log) as f:
            match = re.search(r"starting on \S+:(\d+)$", f.read(), re.MULTILINE)
        if match:
            return int(match.group(1))
        time.sleep(0.1)
    raise SystemExit("the server did not start")


def _measure(hosts: str, parallel: int, env: dict) -> None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "greencmd", "client", "--hosts-file", hosts, "--parallel",
         str(parallel), "--timeout", "60", "--json", "pause"],
        capture_output=True, env=env)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in result.stdout.splitlines()]
    bad = [r for r in records if r["exit"] != 0]
    if result.returncode or bad:
        raise SystemExit("failed: %s %s" % (result.stderr.decode(), bad[:1]))
    slowest = max(r["seconds"] for r in records)
    total = sum(r["seconds"] for r in records)
    print("%-8d  %-6.2f  %-9.2f  %-6.1f  %.0f×" % (parallel, wall, slowest, total,
                                                  total / wall))


if __name__ == "__main__":
    main()
