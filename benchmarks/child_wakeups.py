"""Lost wake-ups with gevent's SIGCHLD child watchers, in a plain gevent server.

    python benchmarks/child_wakeups.py [--connections 4000] [--wait 15]

No greencmd server code: a bare ``StreamServer`` whose handler reads a request,
runs ``tail`` on a small file, reads its output, waits for it and replies. Four
client threads (in another process) open connections, send a line and close,
as fast as they can. Run once with ``gevent.subprocess`` (exit seen through
gevent's SIGCHLD handler and libev child watchers) and once with
``greencmd.gevent_engine.fast_subprocess`` (exit seen on a pidfd), each in a fresh process.

Prints, for each, the requests handled and the handlers still waiting
``--wait`` seconds after the last client left. Any handler still waiting then
waits for ever: its ``tail`` exited long ago. This is why greencmd's
``fast_subprocess`` waits on pidfds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = """
import os, subprocess as std, sys, time
sys.path.insert(0, %(repo)r)
import gevent
from gevent.server import StreamServer
if %(which)r == "gevent.subprocess":
    from gevent.subprocess import DEVNULL, PIPE, STDOUT, Popen
else:
    from greencmd.gevent_engine.fast_subprocess import DEVNULL, PIPE, STDOUT, Popen
waiting, handled = set(), [0]

def handle(sock, address):
    me = gevent.getcurrent()
    waiting.add(me)
    handled[0] += 1
    try:
        if sock.recv(65536):
            child = Popen(["tail", "-n", "100", %(source)r], stdin=DEVNULL, stdout=PIPE,
                          stderr=STDOUT)
            output = child.stdout.read()
            child.stdout.close()
            child.wait()
            sock.sendall(output)
    except OSError:
        pass
    finally:
        waiting.discard(me)

server = StreamServer(("127.0.0.1", 0), handle, backlog=4096)
server.start()
client = std.Popen([sys.executable, "-c", %(client)r, str(server.address[1])])
while client.poll() is None:  # no blocking wait: the server must go on
    gevent.sleep(0.1)
gevent.sleep(%(wait)f)
print(handled[0], len(waiting))
"""

CLIENT = """
import socket, sys, threading
port = int(sys.argv[1])
def clients():
    for _ in range(%d):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"lastlog\\n")
        except OSError:
            pass
threads = [threading.Thread(target=clients) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
"""


def run(which: str, source: str, connections: int, wait: float) -> tuple[int, int]:
    """(requests handled, handlers still waiting) for one variant."""
    code = SERVER % {"repo": REPO, "which": which, "source": source, "wait": wait,
                     "client": CLIENT % (connections // 4)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    handled, stuck = out.stdout.split()
    return int(handled), int(stuck)


def main() -> None:
    """Run both variants and print what each left waiting."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--wait", type=float, default=15)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".log") as source:
        source.writelines("line %d of a fixed log\n" % i for i in range(40))
        source.flush()
        for which in ("gevent.subprocess", "greencmd.gevent_engine.fast_subprocess"):
            handled, stuck = run(which, source.name, args.connections, args.wait)
            print("%-26s %5d requests handled, %d still waiting %gs after the clients left"
                  % (which, handled, stuck, args.wait))


if __name__ == "__main__":
    main()
