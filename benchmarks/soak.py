"""Abuse one greencmd server for a while, then see what it was left holding.

    python benchmarks/soak.py [--engine gevent] [--seconds 30] [--clients 50] [--tls]
                              [--unix] [--workers N] [--stop-under-load]
                              [-- MORE SERVE OPTIONS]

Starts ``greencmd serve`` with configured commands that sleep, flood their pipe
or leave a grandchild behind, then has ``--clients`` threads do, at random and
without pause, what careless and hostile clients do: reset in the middle of a
``lastlog``, a ``comhash`` of 50 MiB, a flood or a ``follow``; stop a follow;
send a pipeline and never read it, or read it a kilobyte at a time; trickle half
a line; send random bytes, an HTTP request, an overlong line; half-close; ask a
plugin command bad input; and, with ``--tls``, speak plain text to the TLS port
or reset in the middle of a handshake. The log
is reopened (SIGHUP) every second and the metrics page scraped five times a
second meanwhile (not with ``--workers``, which has no metrics).

Then, once the idle timeout has ended what is left, it reports the server's
descriptors before and after, its children, its memory, and every line in
which gevent's hub, Twisted or the asyncio loop complained of an error nothing
handled (as the test suite's teardown checks). After the server's exit, any
process still running in a session one of its children led (a ``tail``, a
command's grandchild) is reported too. With ``--stop-under-load`` the server
is sent SIGTERM while the clients are still at it, and must end with status 0
and its closing line ("Main loop terminated.") within its grace and lingers.
Exit status 1 if any descriptor, process or complaint is left. Each of these
found a fault the tests then kept (docs/performance.md); it is not a test
itself, being random and slow.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

#: What each library prints of an error nothing handled, and a session of its command's
#: error nobody expected (tests/conftest.py's list), and what the supervisor of
#: --workers says of a worker that died.
UNHANDLED = (" failed with ", "Unhandled error", "Unhandled Error", "asyncio: ",
             "never retrieved", "Exception in callback", "Task was destroyed",
             "failed unexpectedly", "socket.send() raised exception", "Traceback",
             "exited with status")

COMMANDS = """
[commands.slow]
run = ["sleep", "0.3"]
[commands.flood]
run = ["yes"]
[commands.orphan]
run = ["sh", "-c", "sleep 30 & echo started"]
[commands.echo]
run = ["echo"]
args = "append"
"""


class Target:
    """The server under load: where it listens and how to reach it."""

    def __init__(self, address: int | str, context: ssl.SSLContext | None) -> None:
        self.address, self.context = address, context  # a TCP port, or a Unix socket's path

    def connect(self, plain: bool = False) -> socket.socket:
        """A new connection; over TLS when the server speaks it, unless ``plain``."""
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(self.address)
        else:
            sock = socket.create_connection(("127.0.0.1", self.address), timeout=5)
        if self.context is not None and not plain:
            sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def ask(self, lines: bytes, reset_after: float | None = None) -> bytes:
        """Send ``lines``; reset after ``reset_after`` seconds, or end and read it all."""
        sock = self.connect()
        sock.sendall(lines)
        if reset_after is not None:
            time.sleep(reset_after)
            reset(sock)
            return b""
        if self.context is None:
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(b"exit\n")  # TLS cannot half-close
        return read_all(sock)


def reset(sock: socket.socket) -> None:
    """Close with a reset, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or the connection fails), then close."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    sock.close()
    return data


def actions(target: Target, workdir: str, tls: bool) -> list:
    """What the clients do, one picked at random each time."""
    big = os.path.join(workdir, "big").encode()

    def never_read() -> None:
        sock = target.connect()
        sock.sendall(b"lastlog 1000\n" * 20)
        time.sleep(random.random())
        sock.close()

    def trickle() -> None:
        sock = target.connect()
        sock.sendall(b"lastl")
        time.sleep(random.random() * 3)
        sock.close()

    def garbage() -> None:
        sock = target.connect(plain=True)
        sock.sendall(os.urandom(random.randint(1, 3000)))
        time.sleep(0.05)
        reset(sock)

    def slow_reader() -> None:
        sock = target.connect()
        sock.sendall(b"lastlog 1000\n" * 5 + b"follow 20\n")
        for _ in range(random.randint(1, 30)):
            sock.recv(1024)
            time.sleep(0.03)
        sock.close()

    found = [
        lambda: target.ask(b"lastlog 1000\n", random.random() * 0.02),
        lambda: target.ask(b"comhash %s\n" % big, random.random() * 0.05),
        lambda: target.ask(b"follow 5\n", random.random() * 0.3),
        lambda: target.ask(b"follow 2\n\n"),
        lambda: target.ask(b"slow\n", random.random() * 0.4),
        lambda: target.ask(b"flood\n", random.random() * 0.1),
        lambda: target.ask(b"flood\n"),
        lambda: target.ask(b"orphan\n"),
        lambda: target.ask(b"echo " + os.urandom(20).replace(b"\n", b"") + b"\n"),
        lambda: target.ask(b"disk /nope\nloadavg\n"),
        lambda: target.ask(b"help\nstats\nlastlog 5\n"),
        lambda: target.ask(b"x" * 5000),
        lambda: target.ask(b"lastlog 50\ncomhash /etc/hostname\n"),
        lambda: target.ask(b"GET /metrics HTTP/1.1\r\nHost: greencmd\r\n\r\n"),
        never_read, trickle, garbage, slow_reader,
    ]
    if tls:
        def handshake_reset() -> None:
            sock = target.connect(plain=True)
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
            time.sleep(0.01)
            reset(sock)

        found += [lambda: read_all(target.connect(plain=True)), handshake_reset]
    return found


def fd_count(pid: int) -> int:
    """Open descriptors of process ``pid``."""
    return len(os.listdir("/proc/%d/fd" % pid))


def children(pid: int) -> list[str]:
    """PIDs whose parent is ``pid``."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return found.stdout.split()


def sessions_led(pids: list[int]) -> set[int]:
    """The sessions the children of ``pids`` lead (greencmd starts each child in its own)."""
    return {int(child) for pid in pids for child in children(pid)}


def left_in(sessions: set[int]) -> list[str]:
    """``PID NAME`` of every process still running in one of ``sessions``."""
    left = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:  # not a process, or gone meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]  # a name may hold spaces
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) in sessions and fields[0] != "Z":  # fields[3]: the session's ID
            left.append("%s %s" % (entry, name))
    return left


def servers(proc: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve: the server, or its workers (RSS and descriptors summed)."""
    if workers == 1:
        return [proc.pid]
    return [int(pid) for pid in children(proc.pid)]


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def start_server(args: argparse.Namespace,
                 workdir: str) -> tuple[subprocess.Popen, int | str, int | None]:
    """``greencmd serve`` under load's settings; (process, port or socket, metrics port)."""
    with open(os.path.join(workdir, "source.log"), "w") as f:
        f.writelines("line %d %s\n" % (i, "x" * 80) for i in range(20000))
    with open(os.path.join(workdir, "big"), "wb") as f:
        f.truncate(50 << 20)
    with open(os.path.join(workdir, "commands.toml"), "w") as f:
        f.write(COMMANDS)
    metrics = None
    if args.workers == 1:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics = probe.getsockname()[1]
    argv = [sys.executable, "-m", "greencmd", "serve", "--engine", args.engine,
            "--port", "0", "--config", "commands.toml", "--log-file", "server.log",
            "--lastlog-file", "source.log", "--idle-timeout", "2", "--max-clients", "40",
            "--command-timeout", "2", "--grace", "1", "--max-line", "200",
            "--audit-log", "audit.log", "--workers", str(args.workers),
            *(["--metrics", "127.0.0.1:%d" % metrics] if metrics else []),
            *(["--unix", os.path.join(workdir, "greencmd.sock")] if args.unix else []),
            *args.serve_options]
    if args.tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem",
                        "-out", "cert.pem", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       cwd=workdir, check=True, capture_output=True)
        argv += ["--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    for raw in proc.stdout:
        if b"starting on" in raw:
            if args.unix:
                return proc, os.path.join(workdir, "greencmd.sock"), metrics
            return proc, int(raw.rsplit(b":", 1)[1]), metrics
    raise SystemExit("soak: the server did not start: %d" % proc.wait())


def load(target: Target, todo: list, proc: subprocess.Popen, metrics: int | None,
         args: argparse.Namespace, sessions: set[int]) -> list[str]:
    """Run the clients for ``args.seconds``; what went wrong on the clients' side.

    Meanwhile the sessions the server's children lead are added to ``sessions``,
    and with ``--stop-under-load`` the server is sent SIGTERM at 70 percent of the time.
    """
    stop = time.monotonic() + args.seconds
    errors: list[str] = []

    def client() -> None:
        while time.monotonic() < stop:
            try:
                random.choice(todo)()
            except (OSError, ssl.SSLError) as exc:
                errors.append(type(exc).__name__)

    def reopen_log() -> None:
        while time.monotonic() < stop and proc.poll() is None:
            time.sleep(1)
            proc.send_signal(signal.SIGHUP)

    def scrape() -> None:
        while metrics and time.monotonic() < stop and proc.poll() is None:
            time.sleep(0.2)
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics, timeout=5).read()
            except OSError as exc:
                errors.append("metrics: %s" % exc)

    def note_sessions() -> None:
        while time.monotonic() < stop and proc.poll() is None:
            try:
                sessions.update(sessions_led(servers(proc, args.workers)))
            except (OSError, ValueError):  # a worker ended meanwhile
                pass
            time.sleep(0.02)

    def stop_server() -> None:
        time.sleep(args.seconds * 0.7)
        proc.send_signal(signal.SIGTERM)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    threads += [threading.Thread(target=reopen_log), threading.Thread(target=scrape),
                threading.Thread(target=note_sessions)]
    if args.stop_under_load:
        threads.append(threading.Thread(target=stop_server))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def main() -> None:
    """Load one server, then report what it was left holding (see the module)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="gevent", choices=["gevent", "twisted", "asyncio"])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--unix", action="store_true", help="serve on a Unix socket")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--stop-under-load", action="store_true",
                        help="SIGTERM the server while the clients are still at it")
    parser.add_argument("--output", metavar="FILE",
                        help="keep all the server printed here (complaints come with context)")
    parser.add_argument("serve_options", nargs="*", help="more options for greencmd serve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc, address, metrics = start_server(args, workdir)
        said: list[bytes] = []
        threading.Thread(target=lambda: said.extend(proc.stdout), daemon=True).start()
        context = None
        if args.tls:
            context = ssl.create_default_context(cafile=os.path.join(workdir, "cert.pem"))
        target = Target(address, context)
        target.ask(b"help\n")
        time.sleep(0.5)
        before = sum(fd_count(pid) for pid in servers(proc, args.workers))
        sessions: set[int] = set()
        errors = load(target, actions(target, workdir, args.tls), proc, metrics, args, sessions)
        after, left, rss = held(proc, args) if not args.stop_under_load else (before, [], 0)
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        time.sleep(0.5)  # killed processes take a moment to go
        left += left_in(sessions)
    if args.output:
        with open(args.output, "wb") as f:
            f.writelines(said)
    log = b"".join(said).decode("utf-8", "replace").splitlines()
    complaints = [line for line in log if any(mark in line for mark in UNHANDLED)]
    ended = any("Main loop terminated." in line for line in log)
    held_text = ("descriptors %d -> %d; " % (before, after) if not args.stop_under_load
                 else "")  # stopped while busy: what it held then says nothing
    print("%s, %d clients for %g s%s: exit %d%s; %sprocesses left %d; %s"
          "client-side errors %d; complaints %d"
          % (args.engine + (" over TLS" if args.tls else "") + (" on a Unix socket" if args.unix
                                                                else "")
             + (" with %d workers" % args.workers if args.workers > 1 else ""),
             args.clients, args.seconds, ", stopped under load" if args.stop_under_load else "",
             status, "" if ended else " without its closing line", held_text, len(left),
             "" if args.stop_under_load else "RSS %d MiB; " % (rss >> 10), len(errors),
             len(complaints)))
    for line in left[:10]:
        print("  left running: " + line)
    for line in complaints[:20]:
        print("  " + line)
    sys.exit(1 if status or not ended or after > before or left or complaints else 0)


def held(proc: subprocess.Popen, args: argparse.Namespace) -> tuple[int, list[str], int]:
    """Once the load is over and the idle timeout has ended what is left: the server's
    descriptors, its children (``PID``) and its RSS in KiB."""
    time.sleep(6)  # idle timeouts, lingering closes and the last children end
    found = servers(proc, args.workers)
    after = sum(fd_count(pid) for pid in found)
    left = ["%s (a child)" % child for pid in found for child in children(pid)]
    return after, left, sum(rss_kib(pid) for pid in found)


if __name__ == "__main__":
    main()
