"""Two greencmd commands, as plain functions: ``(arg: str) -> str``.

greencmd calls each with the request's argument ("" when there is none) and
sends back what it returns (adding a final newline if it lacks one). An
exception becomes the reply ``An error occured: <str(exc)>``, and the server
logs one line (its traceback at most once a minute): raise with a message a
person understands. The syntax that opens each docstring is what ``help`` shows.

The gevent engine calls these in the session's greenlet, so they must not
block for long without yielding: use gevent's sockets or ``gevent.sleep`` for
waiting (the Twisted twin and the asyncio engine call them in a worker thread,
where anything goes; asyncio awaits an ``async def`` one). Both calls here are
quick system calls.
"""

from __future__ import annotations

import os
import shutil


def disk(arg: str) -> str:
    """``disk [PATH]``: free space of the file system holding PATH (default /)."""
    path = arg or "/"
    usage = shutil.disk_usage(path)  # FileNotFoundError names the path
    used = 100 * (usage.total - usage.free) / usage.total if usage.total else 0.0
    return "%s: %s free of %s (%.0f%% used)" % (path, _size(usage.free), _size(usage.total),
                                                used)


def loadavg(arg: str) -> str:
    """``loadavg``: the 1, 5 and 15 minute load averages."""
    if arg:
        raise ValueError("loadavg takes no arguments")
    return "load average: %.2f %.2f %.2f" % os.getloadavg()


def _size(count: int) -> str:
    """``123456789`` -> ``117.7 MiB``."""
    size, units = float(count), ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return "%.1f %s" % (size, units[0])
