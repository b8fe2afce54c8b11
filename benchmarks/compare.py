"""The three engines (gevent, the Twisted twin, asyncio) and the floor, side by side, in one run.

    python benchmarks/compare.py [--reps 3] [--seconds 5] [--only NAME ...]
                                 [--engines gevent twisted asyncio floor floor-spec
                                            floor-greenlets]
                                 [--json out.json] [--plot out.png]

Each scenario starts a fresh server of each engine on a free port, pinned to
CPU 0 (except comhash, whose point is using every CPU), runs `greencmd bench`
pinned to CPU 1, and stops the server. ``floor`` is ``benchmarks/floor.py``,
the plainest gevent server answering the same commands; ``floor-spec`` is it
with the spec's log lines, a bound on greenlets and ``lastlog``'s child run with
the spec's guarantees, the thread way (``floor.py --spec --children guarded``):
the part of an engine's cost over the floor that any server of the spec pays;
``floor-greenlets`` is the floor with ``lastlog``'s child run as the gevent
engine runs it (``floor.py --children greenlets``).
``churn-paced`` gives every server the same 5,000 connections per second
(``greencmd bench churn --rate``): CPU per connection at equal load, where
``churn`` lets each go as fast as it can, which also changes what the kernel
charges it for waking the load generator; ``churn-busy`` lets each go as fast
as it can with a load generator that never sleeps (``--busy-poll``), so no
server is charged for waking it.
Engines alternate in order from one repetition to the next. Prints the
machine, the commands, the median of each engine, for each repetition gevent's
figure over each other engine's, and each engine's server CPU per operation
over the floor's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ("gevent", "twisted", "asyncio", "floor", "floor-spec", "floor-greenlets")
FLOOR = os.path.join(REPO, "benchmarks", "floor.py")

# name: (bench scenario, serve options, bench options, pin the server)
SCENARIOS = {
    "unknown-quiet": ("unknown", ["--quiet"], ["-c", "50"], True),
    "unknown-logging": ("unknown", [], ["-c", "50"], True),
    "pipeline": ("pipeline", ["--quiet"], ["--lines", "10000"], True),
    "churn": ("churn", ["--quiet"], ["-c", "50"], True),
    "churn-logging": ("churn", [], ["-c", "50"], True),
    # Every server gets the same connections per second: CPU per connection at equal
    # load, which a saturated run is not (docs/performance.md, "churn at equal load").
    "churn-paced": ("churn", ["--quiet"], ["-c", "50", "--rate", "5000"], True),
    # The load generator never sleeps, so no server pays for waking it at each close
    # (loopback): each server's own work (docs/performance.md, "twelfth pass").
    "churn-busy": ("churn", ["--quiet"], ["-c", "50", "--busy-poll"], True),
    "lastlog": ("lastlog", ["--quiet"], ["-c", "10"], True),
    "comhash": ("comhash", ["--quiet"], ["-c", "4", "--size-mib", "64"], False),
    "idle": ("idle", ["--quiet"], ["-c", "50", "--idle", "5000"], True),
}
#: Connections for the replies/s-against-connections plot (unknown, --quiet).
SWEEP = (1, 10, 50, 200)


def write_source_log(workdir: str) -> None:
    """The lastlog source every server is started with: 40 fixed lines in ``workdir``."""
    with open(os.path.join(workdir, "source.log"), "w") as f:
        f.writelines("Nov 26 12:00:%02d host app[1]: line %d of a fixed log\n" % (i, i)
                     for i in range(40))


def taskset(cpu: str) -> list[str]:
    """The prefix that pins a command to ``cpu``, if taskset exists here."""
    return ["taskset", "-c", cpu] if shutil.which("taskset") else []


def server_command(engine: str, options: list[str], workdir: str) -> list[str]:
    """The command line that serves ``engine`` on a free port, its log in ``workdir``."""
    source = os.path.join(workdir, "source.log")
    if engine == "floor":  # no options: it has no log, no limits
        return [sys.executable, FLOOR, "--lastlog-file", source]
    if engine == "floor-greenlets":  # the floor, its children run the gevent engine's way
        return [sys.executable, FLOOR, "--lastlog-file", source, "--children", "greenlets"]
    if engine == "floor-spec":  # the floor, logged, bounded and guarded as the spec asks
        return [sys.executable, FLOOR, "--lastlog-file", source, "--spec", "--children", "guarded",
                "--log-file", os.path.join(workdir, "server-%s.log" % engine),
                "--max-clients", "6000", *[o for o in options if o == "--quiet"]]
    return [sys.executable, "-m", "greencmd", "serve", "--engine", engine, "--port",
            "0", "--log-file", os.path.join(workdir, "server-%s.log" % engine),
            "--lastlog-file", source, "--max-clients", "6000", *options]


def start_server(engine: str, options: list[str], pin: bool, workdir: str,
                 prefix: list[str] | None = None):
    """Start a server (its command after ``prefix``, if any); return (process, port)."""
    command = (taskset("0") if pin else []) + (prefix or []) + server_command(
        engine, options, workdir)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=REPO))
    for raw in proc.stdout:
        if b"starting on" in raw:
            port = int(raw.rsplit(b":", 1)[1])
            # The rest of stdout is not read: send it nowhere, cheaply.
            threading_drain(proc.stdout)
            return proc, port
    raise RuntimeError("%s server did not start" % engine)


def threading_drain(stream) -> None:
    """Read and drop a stream in a thread, so the server never blocks on it."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def bench(port: int, pid: int, scenario: str, options: list[str], seconds: float,
          workdir: str) -> dict:
    """Run one `greencmd bench` scenario; its JSON result."""
    command = taskset("1") + [
        sys.executable, "-m", "greencmd", "bench", "--port", str(port), "--server-pid",
        str(pid), "--seconds", str(seconds), "--directory", workdir, "--json", scenario,
        *options]
    out = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=REPO),
                         timeout=seconds * 10 + 120)
    if not out.stdout:
        raise RuntimeError("bench failed: %s" % out.stderr.decode()[-500:])
    return json.loads(out.stdout)[0]


def run_one(engine: str, name: str, seconds: float, workdir: str) -> dict:
    """One scenario against a fresh server of ``engine``."""
    scenario, serve_options, bench_options, pin = SCENARIOS[name]
    proc, port = start_server(engine, serve_options, pin, workdir)
    try:
        return bench(port, proc.pid, scenario, bench_options, seconds, workdir)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def value(result: dict, name: str) -> float:
    """The number compared for a scenario (idle: server memory per session)."""
    if name == "idle":
        return result["extra"].get("rss_kib_per_session", float("nan"))
    return result["rate"]


def machine() -> str:
    """One line about this machine."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%d x %s, Linux %s, Python %s, gevent %s, Twisted %s" % (
        os.cpu_count(), model, platform.release(), platform.python_version(),
        metadata.version("gevent"), metadata.version("twisted"))


def main() -> None:
    """Run every scenario for every engine, in rotating order, and report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--engines", nargs="*", choices=ENGINES, default=list(ENGINES),
                        help="gevent is always measured: the ratios are over it")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the replies/s-against-connections sweep and its plot")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    names = [] if args.sweep_only else (args.only or list(SCENARIOS))
    engines = tuple(e for e in ENGINES if e in args.engines or e == "gevent")
    print("machine: %s" % machine())
    print("server pinned with `taskset -c 0` (comhash: unpinned), "
          "`greencmd bench` with `taskset -c 1`\n")
    results: dict[str, dict[str, list[dict]]] = {n: {e: [] for e in engines} for n in names}
    sweep: dict[int, dict[str, list[dict]]] = {c: {e: [] for e in engines} for c in SWEEP}
    with tempfile.TemporaryDirectory(prefix="greencmd-compare-") as workdir:
        write_source_log(workdir)
        for rep in range(args.reps):
            # Rotate the order each repetition: no engine always runs first.
            order = engines[rep % len(engines):] + engines[:rep % len(engines)]
            for name in names:
                for engine in order:
                    sys.stderr.write("rep %d/%d: %s, %s\n" % (rep + 1, args.reps, name, engine))
                    results[name][engine].append(run_one(engine, name, args.seconds, workdir))
            if not args.no_sweep:
                for connections in SWEEP:
                    SCENARIOS["sweep"] = ("unknown", ["--quiet"], ["-c", str(connections)], True)
                    for engine in order:
                        result = run_one(engine, "sweep", args.seconds / 2, workdir)
                        sweep[connections][engine].append(
                            {"rate": result["rate"], "us": result["server_us_per_op"]})
    if names:
        report(names, results, engines)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results,
                       "sweep": {str(k): v for k, v in sweep.items()}}, f, indent=1)
    if args.plot and not args.no_sweep:
        plot(sweep, args.plot, engines)


def per_rep(runs: dict, top: str, bottom: str, figure) -> str:
    """``figure(top run) / figure(bottom run)`` for each repetition, as text."""
    return ", ".join("%.2f" % (figure(t) / figure(b)) if figure(b) else "-"
                     for t, b in zip(runs[top], runs[bottom], strict=True))


def report(names: list[str], results: dict, engines: tuple[str, ...]) -> None:
    """Print medians and per-repetition ratios as Markdown: gevent's figure over each
    other engine's, and each engine's server CPU per operation over the floor's."""
    others = engines[1:]
    engines_cpu = [e for e in engines if e != "floor"] if "floor" in engines else []
    cpu_pairs = [(e, "floor") for e in engines_cpu]
    for floor in ("floor-spec", "floor-greenlets"):
        if floor in engines:
            cpu_pairs.append(("gevent", floor))
    print("| scenario | unit | %s | %s | server µs/op %s | %s | p99 ms %s | errors |" % (
        " | ".join("%s (median)" % e for e in engines),
        " | ".join("gevent/%s per rep" % e for e in others),
        " / ".join(engines), " | ".join("µs/op %s/%s per rep" % pair for pair in cpu_pairs),
        " / ".join(engines)))
    print("|" + " --- |" * (2 * len(engines) + len(cpu_pairs) + 4))
    for name in names:
        runs = results[name]
        unit = "KiB RSS/session" if name == "idle" else runs["gevent"][0]["unit"]
        medians = {e: statistics.median(value(r, name) for r in runs[e]) for e in engines}
        ratios = [per_rep(runs, "gevent", e, functools.partial(value, name=name)) for e in others]
        over_floor = [per_rep(runs, top, bottom, lambda r: r["server_us_per_op"] or 0)
                      for top, bottom in cpu_pairs]
        cost = {e: statistics.median(r["server_us_per_op"] or 0 for r in runs[e])
                for e in engines}
        p99 = {e: statistics.median(r["p99_ms"] or 0 for r in runs[e]) for e in engines}
        errors = sum(r["errors"] for e in engines for r in runs[e])
        print("| %s | %s | %s | %s | %s | %s | %s | %d |" % (
            name, unit, " | ".join("%.1f" % medians[e] for e in engines), " | ".join(ratios),
            " / ".join("%.1f" % cost[e] for e in engines), " | ".join(over_floor),
            " / ".join("%.1f" % p99[e] for e in engines), errors))
        if name == "comhash":
            for e in engines:
                print("|  | comhash %s vs hashlib single thread | %s |"
                      % (e, [r["extra"]["vs_hashlib"] for r in runs[e]]))
        if name == "idle":
            for e in engines:
                print("|  | unknown beside 5,000 idle, %s (replies/s) | %s |"
                      % (e, [round(r["rate"]) for r in runs[e]]))
        offered = runs["gevent"][0]["extra"].get("offered_per_second")
        behind = [e for e in engines if offered and medians[e] < 0.97 * offered]
        if behind:  # its CPU per connection is then a saturated figure, not an equal-load one
            print("|  | %s could not keep up with %d connections/s | %s |"
                  % (", ".join(behind), offered, [round(medians[e]) for e in behind]))


def plot(sweep: dict, path: str, engines: tuple[str, ...]) -> None:
    """replies/s against connections, every engine (needs matplotlib: the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, costs) = plt.subplots(1, 2, figsize=(10, 4.2))
    for engine in engines:
        rates.plot(SWEEP, [statistics.median(r["rate"] for r in sweep[c][engine])
                           for c in SWEEP], marker="o", label=engine)
        costs.plot(SWEEP, [statistics.median(r["us"] or 0 for r in sweep[c][engine])
                           for c in SWEEP], marker="o", label=engine)
    rates.set_ylabel("replies/s (median; load generator on one CPU)")
    costs.set_ylabel("server CPU per reply, µs (median; lower is better)")
    for ax in (rates, costs):
        ax.set_xscale("log")
        ax.set_xlabel("connections (closed loop, unknown command, --quiet)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("greencmd: gevent, Twisted and asyncio engines")
    fig.text(0.01, 0.01, machine(), fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
