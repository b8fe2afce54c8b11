"""Profile the gevent server in-process (yappi, greenlet-aware) under `greencmd bench`.

    python benchmarks/profile_server.py [SCENARIO] [--seconds S] [-- SERVE OPTIONS]

The server runs pinned to CPU 0 and the load generator to CPU 1 (where taskset
exists). Prints the functions that cost the server most CPU, own time first.
Needs `pip install yappi`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import gevent
import gevent.subprocess
import yappi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greencmd.core.logs import setup_logging  # noqa: E402
from greencmd.core.settings import ServerConfig  # noqa: E402
from greencmd.gevent_engine.server import CommandServer, start_log_flushing  # noqa: E402


def main() -> None:
    """Start the server, load it from a child process, print the profile."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", nargs="?", default="unknown")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--lastlog-file", default=None)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    log_file = "/tmp/greencmd-profile.log"
    setup_logging(log_file, stream=open(os.devnull, "w"))
    config = ServerConfig(port=0, quiet=args.quiet, max_clients=1000, log_file=log_file,
                          lastlog_file=args.lastlog_file or log_file)
    server = CommandServer(config)
    start_log_flushing()  # as `greencmd serve` does
    server.start()
    port = server.address[1]
    bench = [sys.executable, "-m", "greencmd", "bench", "--port", str(port),
             "--seconds", str(args.seconds), args.scenario]
    if shutil.which("taskset"):
        bench = ["taskset", "-c", "1"] + bench
    yappi.set_clock_type("cpu")
    yappi.set_context_backend("greenlet")
    yappi.start()
    loadgen = gevent.subprocess.Popen(bench, env=dict(os.environ, PYTHONPATH=sys.path[0]))
    loadgen.wait()
    yappi.stop()
    server.shutdown(0)
    stats = yappi.get_func_stats()
    stats.sort("tsub")
    total = sum(s.tsub for s in stats)
    print("\nserver CPU by function (own time), total %.2fs" % total)
    for s in list(stats)[:args.top]:
        print("%6.1f%% %7d  %s:%d %s" % (100 * s.tsub / total, s.ncall,
                                         os.path.basename(s.module), s.lineno, s.name))


if __name__ == "__main__":
    main()
