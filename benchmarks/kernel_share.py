"""Where a server's CPU goes per operation, the kernel's part included: sampled with perf.

    python benchmarks/kernel_share.py [SCENARIO] [--reps 3] [--seconds 5]
                                      [--engines gevent floor] [--top 15]
                                      [--by-python-function]

callgrind (``benchmarks/instructions.py``) counts the instructions a server runs
in user space; the time the kernel spends for it (system calls, page faults, the
scheduler) is not there. This samples CPU 0, where ``compare.py`` pins the
server, with ``perf record -e cpu-clock -g`` while ``greencmd bench`` loads it
from CPU 1, keeps the samples of the server's own process (its threads, not its
children), and files each one: a kernel sample under the system call it was in
(or ``page faults``, or ``kernel, other``), a user sample under its library.
Engines alternate from one repetition to the next; the table gives each one's
median µs per operation and the difference from the first engine. Sampling
slows the server a little, alike for all.

``--by-python-function`` (Python 3.12 or newer) files each sample instead under
the Python function that was running, with everything it called below Python
(C code, system calls, page faults; greenlet switches and the libev loop fall
under ``Hub.run``): the servers run with ``PYTHONPERFSUPPORT=1``, which makes
each Python function a symbol perf can name, and perf unwinds the stack with
DWARF, as frame pointers are not there to follow.

Needs perf (Debian: ``linux-perf``) and the right to sample the whole CPU
(root, or ``kernel.perf_event_paranoid`` at most 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402

#: Samples per second; an odd rate, so as not to beat with a timer.
HERTZ = 2999
#: With --by-python-function: fewer samples, as each carries a copy of the stack.
DWARF_HERTZ = 999


def category(frames: list[str]) -> str:
    """Where one sample was, from its call chain (innermost frame first).

    Each frame is perf script's ``ADDRESS SYMBOL (OBJECT)``.
    """
    leaf_object = frames[0].rsplit("(", 1)[-1].rstrip(")")
    if "kernel" not in leaf_object:
        name = os.path.basename(leaf_object)
        return "user: " + (name.split(".cpython")[0] if ".cpython" in name else name)
    for frame in frames:
        symbol = frame.split()[1] if len(frame.split()) > 1 else ""
        if symbol.startswith("__x64_sys_"):
            return "kernel: " + symbol[len("__x64_sys_"):]
        if symbol == "asm_exc_page_fault":
            return "kernel: page faults"
    return "kernel, other"


def python_function(frames: list[str]) -> str:
    """The innermost Python function of one sample's call chain (``py::`` symbols,
    named so by ``PYTHONPERFSUPPORT``), as ``NAME (FILE)``."""
    for frame in frames:
        # ADDRESS SYMBOL (OBJECT); a Python symbol may hold spaces ("<frozen os>").
        symbol = frame.partition(" ")[2].rsplit(" (", 1)[0]
        if symbol.startswith("py::"):
            name, _, path = symbol[len("py::"):].partition(":")
            return "%s (%s)" % (name, os.path.basename(path))
    return "no Python function"


def samples_by_category(data: str, pid: int, category=category) -> collections.Counter:
    """Samples of process ``pid`` in perf's ``data`` file, counted by ``category``."""
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    counts: collections.Counter = collections.Counter()
    header, frames = None, []
    for line in script.splitlines() + [""]:
        if line.startswith(("\t", " ")) and line.strip():
            frames.append(line.strip())
            continue
        if header is not None and frames and header.split()[1].split("/")[0] == str(pid):
            counts[category(frames)] += 1
        header, frames = (line, []) if line.strip() else (None, [])
    return counts


def run_one(engine: str, name: str, seconds: float, workdir: str,
            by_function: bool = False) -> dict[str, float]:
    """One scenario against a fresh server of ``engine``: µs per operation by category
    (or by Python function)."""
    scenario, serve_options, bench_options, _ = compare.SCENARIOS[name]
    proc, port = compare.start_server(engine, serve_options, True, workdir)
    data = os.path.join(workdir, "perf.data")
    hertz = DWARF_HERTZ if by_function else HERTZ
    stacks = ["--call-graph", "dwarf,32768"] if by_function else ["-g"]
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(hertz),
                             *stacks, "-C", "0", "-o", data], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        result = compare.bench(port, proc.pid, scenario, bench_options, seconds, workdir)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    counts = (samples_by_category(data, proc.pid, python_function if by_function else category)
              if os.path.exists(data) else None)
    if not counts:
        sys.exit("kernel_share.py: perf recorded nothing of the server: it needs the right "
                 "to sample a whole CPU (root, or kernel.perf_event_paranoid at most 0)")
    per_op = 1e6 / hertz / result["count"]
    return {key: n * per_op for key, n in counts.items()}


def report(runs: dict[str, list[dict[str, float]]], top: int) -> None:
    """The table: median µs/op by category for each engine, largest differences first."""
    engines = list(runs)
    keys = {key for results in runs.values() for result in results for key in result}
    medians = {e: {k: statistics.median(r.get(k, 0.0) for r in runs[e]) for k in keys}
               for e in engines}
    totals = {e: statistics.median(sum(r.values()) for r in runs[e]) for e in engines}
    first = engines[0]
    width = max(len(e) for e in engines) + 2
    label = min(44, max(24, *(len(k) for k in keys)))
    print("%-*s" % (label, "µs per operation") + "".join("%*s" % (width + 6, e) for e in engines)
          + "   %s minus %s" % (first, engines[-1]))
    print("%-*s" % (label, "total (median)")
          + "".join("%*.1f" % (width + 6, totals[e]) for e in engines)
          + "   %+.1f" % (totals[first] - totals[engines[-1]]))
    by_gap = sorted(keys, key=lambda k: -abs(medians[first][k] - medians[engines[-1]][k]))
    for key in by_gap[:top]:
        print("%-*s" % (label, key[:label])
              + "".join("%*.1f" % (width + 6, medians[e][key]) for e in engines)
              + "   %+.1f" % (medians[first][key] - medians[engines[-1]][key]))


def main() -> None:
    """Run the scenario for each engine, alternating, and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", nargs="?", default="lastlog",
                        choices=sorted(compare.SCENARIOS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--engines", nargs="*", choices=compare.ENGINES,
                        default=["gevent", "floor"])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-python-function", action="store_true",
                        help="file samples under the Python function running (Python 3.12+)")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("kernel_share.py needs perf (Debian: apt-get install linux-perf)")
    if args.by_python_function:
        if sys.version_info < (3, 12):
            sys.exit("kernel_share.py --by-python-function needs Python 3.12 or newer "
                     "(perf support); run it with one")
        os.environ["PYTHONPERFSUPPORT"] = "1"  # the servers inherit it
    print("machine: %s" % compare.machine())
    print("scenario %s, %d repetitions of %g s; perf cpu-clock at %d Hz on CPU 0%s\n"
          % (args.scenario, args.reps, args.seconds,
             DWARF_HERTZ if args.by_python_function else HERTZ,
             ", by Python function" if args.by_python_function else ""))
    runs: dict[str, list[dict[str, float]]] = {e: [] for e in args.engines}
    with tempfile.TemporaryDirectory(prefix="greencmd-kernel-share-") as workdir:
        compare.write_source_log(workdir)
        for rep in range(args.reps):
            order = args.engines[rep % len(args.engines):] + args.engines[:rep % len(args.engines)]
            for engine in order:
                sys.stderr.write("rep %d/%d: %s\n" % (rep + 1, args.reps, engine))
                runs[engine].append(run_one(engine, args.scenario, args.seconds, workdir,
                                            args.by_python_function))
    report(runs, args.top)


if __name__ == "__main__":
    main()
