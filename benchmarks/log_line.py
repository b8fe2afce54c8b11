"""Instructions per log line: greencmd's ``log()`` beside the plainest line a server could write.

    python benchmarks/log_line.py [--lines 50000]

``floor-spec`` (``floor.py --spec``) writes the spec's lines with greencmd's own
log, so a slow log would hide in it. This counts, with valgrind's callgrind
(``apt install valgrind``), what one line costs each way, in a loop of its own:

- ``greencmd``: ``logs.log()`` with the engines' flush timer (lines batched, written
  to stdout's handler in whole-line pieces);
- ``plain``: the plainest Twisted-style log a server could call (:class:`PlainLog`),
  the timestamp made once per second, an f-string written to a buffered file.

Both write to ``/dev/null``; each figure is a run's instructions less those of the
same run with no line (imports and set-up), divided by the lines. In a server a
line costs more than in a loop of its own (docs/performance.md): compare the two
figures, not either with a server's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from typing import TextIO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = "Client connection from 127.0.0.1"


def greencmd_lines(count: int) -> None:
    """``count`` lines through greencmd's log, flushed every 1,000 as the timer would."""
    sys.path.insert(0, REPO)
    from greencmd.core import logs

    logs.setup_logging(None, stream=open(os.devnull, "w"))  # noqa: SIM115
    logs.install_flush_timer(lambda delay, flush: (lambda: None))  # flushed below
    for number in range(count):
        logs.log(MESSAGE, "CommandServer")
        if number % 1000 == 999:
            logs.flush_logs()
    logs.flush_logs()


class PlainLog:
    """The plainest Twisted-style log a server could call: the timestamp made once per
    second, an f-string written to a buffered file."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.second = -1
        self.stamp = ""

    def log(self, message: str, system: str = "-") -> None:
        """Write ``message`` said by ``system``, stamped now."""
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.stamp = time.strftime("%Y-%m-%d %H:%M:%S%z", time.localtime(now))
        self.out.write(f"{self.stamp} [{system}] {message}\n")


def plain_lines(count: int) -> None:
    """``count`` lines written the plainest way."""
    with open(os.devnull, "w") as out:
        log = PlainLog(out).log
        for _ in range(count):
            log(MESSAGE, "CommandServer")


WAYS = {"greencmd": greencmd_lines, "plain": plain_lines}


def instructions(way: str, count: int) -> int:
    """Instructions callgrind counts for a run of ``way`` with ``count`` lines."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--run", way, "--lines", str(count)],
        capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", result.stderr)[1])


def main() -> None:
    """Count each way, or (``--run``) be the program counted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50000)
    parser.add_argument("--run", choices=sorted(WAYS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        WAYS[args.run](args.lines)
        return
    print("Python %s; instructions per line, %d lines" % (sys.version.split()[0], args.lines))
    figures = {way: (instructions(way, args.lines) - instructions(way, 0)) / args.lines
               for way in WAYS}
    for way, figure in figures.items():
        print("%-9s %7.0f  (%.2f x plain)" % (way, figure, figure / figures["plain"]))


if __name__ == "__main__":
    main()
