"""Child processes per second: gevent.subprocess against gevent_engine.fast_subprocess.

    python benchmarks/spawn.py [--count 2000] [--concurrency 10]

Each variant runs in a process of its own (gevent.subprocess installs a SIGCHLD
handler that reaps every child of the process) and runs what ``lastlog`` runs:
spawn ``tail -n 10 FILE`` with stdout a pipe, read it to EOF, wait for the
exit, ``--concurrency`` greenlets at a time. Prints spawns per second for each
and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANT = """
import sys, time
sys.path.insert(0, %(repo)r)
import gevent
from gevent.pool import Pool
if %(which)r == "gevent.subprocess":
    from gevent.subprocess import DEVNULL, PIPE, STDOUT, Popen
else:
    from greencmd.gevent_engine.fast_subprocess import DEVNULL, PIPE, STDOUT, Popen

def one(_):
    child = Popen(["tail", "-n", "10", %(source)r], stdin=DEVNULL, stdout=PIPE,
                  stderr=STDOUT, start_new_session=True)
    while child.stdout.read(65536):
        pass
    child.stdout.close()
    return child.wait()

started = time.perf_counter()
statuses = list(Pool(%(concurrency)d).imap_unordered(one, range(%(count)d)))
assert statuses == [0] * %(count)d, set(statuses)
print(%(count)d / (time.perf_counter() - started))
"""


def measure(which: str, source: str, count: int, concurrency: int) -> float:
    """Spawns per second for one variant, in a fresh process."""
    code = VARIANT % {"repo": REPO, "which": which, "source": source, "count": count,
                      "concurrency": concurrency}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    return float(out.stdout)


def main() -> None:
    """Measure both variants, three times each, alternating; print medians and the ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    variants = ("gevent.subprocess", "greencmd.gevent_engine.fast_subprocess")
    with tempfile.NamedTemporaryFile("w", suffix=".log") as source:
        source.writelines("line %d of a fixed log\n" % i for i in range(40))
        source.flush()
        rates: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.reps):
            for which in variants:
                rates[which].append(measure(which, source.name, args.count,
                                            args.concurrency))
    median = {v: sorted(r)[len(r) // 2] for v, r in rates.items()}
    for which in variants:
        print("%-26s %7.0f spawns/s (median of %d; each: %s)" % (
            which, median[which], args.reps, ", ".join("%.0f" % r for r in rates[which])))
    print("ratio: %.2fx" % (median[variants[1]] / median[variants[0]]))


if __name__ == "__main__":
    main()
