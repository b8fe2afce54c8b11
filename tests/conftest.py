"""Fixtures: real greencmd servers on port 0, real sockets, real files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Every test that uses a server runs against each engine: a difference in what
#: they answer is a bug in one of them. @pytest.mark.engines("gevent") narrows it.
ENGINES = ("gevent", "twisted", "asyncio")


def pytest_configure(config):
    config.addinivalue_line("markers", "engines(*names): run only against these engines")


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engines")
        metafunc.parametrize("engine", marker.args if marker else ENGINES)
STARTING = re.compile(r"starting on (?:unix:(?P<unix>[^\s\"]+)|(?P<host>[^\s\"]+):(?P<port>\d+))"
                      r"(?:\"\})?$")  # a text line, or a JSON one (--log-format json)


def greencmd_env(**extra: str) -> dict[str, str]:
    """The environment for a greencmd child: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENCMD_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_greencmd(*args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m greencmd ARGS`` to completion."""
    kwargs.setdefault("env", greencmd_env())
    return subprocess.run([sys.executable, "-m", "greencmd", *args], capture_output=True,
                          timeout=timeout, **kwargs)


class Server:
    """A ``greencmd serve`` child process and the lines it logged."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "greencmd", "serve", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._stderr_text: bytes | None = None
        self._changed = threading.Condition()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        match = self.wait_for_log(STARTING.search)
        self.unix = match["unix"]
        self.host, self.port = match["host"], int(match["port"] or 0)

    def _collect(self) -> None:
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, predicate, timeout: float = 15):
        """The first truthy ``predicate(line)`` of the log, waiting for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    result = predicate(line)
                    if result:
                        return result
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError("log never showed it; log so far:\n"
                                         + "\n".join(self.lines)
                                         + "\nstderr: %r" % self._stderr())
                self._changed.wait(min(left, 0.2))

    def count_log(self, text: str) -> int:
        """How many log lines contain ``text``."""
        with self._changed:
            return sum(text in line for line in self.lines)

    def wait_for_count(self, text: str, count: int, timeout: float = 15) -> None:
        """Wait until ``count`` log lines contain ``text``."""
        self.wait_for_log(lambda _: self.count_log(text) >= count, timeout)

    def _stderr(self) -> bytes:
        if self.proc.poll() is None:
            return b"(still running)"
        if self._stderr_text is None:
            self._stderr_text = self.proc.stderr.read()
        return self._stderr_text

    def complaints(self) -> list[str]:
        """What the server's libraries said of an error nobody handled: gevent's hub
        printing a greenlet's traceback, Twisted's unhandled errors, the asyncio loop's
        exception handler; each is a fault, whatever the client did. Once it has exited."""
        said = [line for line in self.lines if any(mark in line for mark in UNHANDLED)]
        stderr = self._stderr().decode("utf-8", "replace")
        if "Traceback" in stderr or any(mark in stderr for mark in UNHANDLED):
            said.append(stderr)
        return said

    def children(self) -> list[int]:
        """PIDs whose parent is the server (zombies included)."""
        return children_of(self.proc.pid)

    def fd_count(self) -> int:
        """Open file descriptors of the server process."""
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def connect(self, timeout: float = 10) -> socket.socket:
        """A client socket connected to the server (over its Unix socket, if it has one)."""
        if self.unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.unix)
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def talk(self, data: bytes, timeout: float = 20) -> bytes:
        """Send ``data``, close the sending side, return all the server says."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return read_all(sock)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            status = self.proc.wait(timeout)
            self._collector.join(timeout)  # every line it logged is in self.lines
            return status
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit within %gs of signal %d"
                                 % (timeout, signum)) from None


def sigint_as_usual() -> None:
    """In a child before it runs: SIGINT at its default, so Ctrl-C is KeyboardInterrupt
    even when the suite runs as a background job (the shell makes those ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """Read until the data received ends with ``end`` (or the peer closes)."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def children_of(pid: int) -> list[int]:
    """PIDs of the live or zombie children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status in KiB: VmRSS (now) or VmHWM (the peak)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for %d" % (field, pid))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15, message: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s did not hold within %gs" % (message, timeout))
        time.sleep(0.02)


#: What gevent's hub, Twisted and the asyncio loop's handler (as the engine logs it)
#: print of an error that no code of greencmd handled, and what a session logs of an
#: error its command raised that nobody expected (a bug of ours: plugins' are logged
#: as "Command NAME (PLUGIN) failed").
UNHANDLED = (" failed with ", "Unhandled error", "Unhandled Error", "asyncio: ",
             "never retrieved", "Exception in callback", "Task was destroyed",
             "failed unexpectedly", "socket.send() raised exception")


@pytest.fixture
def start_server(tmp_path, engine):
    """Start servers with extra ``serve`` options; each is stopped and checked after.

    By default the log file is in tmp_path and lastlog tails a small file there.
    At teardown: no child process may be left, SIGTERM must give exit 0, and no
    library may have complained of an error nobody handled.
    """
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None, **kwargs) -> Server:
        options = list(args)
        if not any(a.startswith("--log-file") for a in options):
            options += ["--log-file", str(tmp_path / "server.log")]
        if not any(a.startswith("--lastlog-file") for a in options):
            options += ["--lastlog-file", str(sample_log(tmp_path))]
        server = Server(["--engine", engine, "--port", "0", *options],
                        kwargs.get("cwd", tmp_path), env or greencmd_env())
        servers.append(server)
        return server

    yield start
    try:
        for server in servers:
            if server.proc.poll() is None:
                wait_until(lambda s=server: not s.children(), 15, "no child process left")
                assert server.stop() == 0
            assert not server.complaints()
    finally:
        for server in servers:  # even when a check above failed: leave nothing running
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()


@pytest.fixture
def server(start_server):
    """One server with default options."""
    return start_server()


SAMPLE_LINES = [b"line %d of the sample log" % i for i in range(1, 21)]


def sample_log(directory: Path) -> Path:
    """A 20-line log file, with a ``==>`` header line that lastlog leaves out."""
    path = directory / "sample.log"
    if not path.exists():
        body = SAMPLE_LINES[:15] + [b"==> header <=="] + SAMPLE_LINES[15:]
        path.write_bytes(b"\n".join(body) + b"\n")
    return path


HELP = b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, quit\n"
NOT_FOUND = b"Command not found.\n"
BIG = 1 << 30  # sparse, so it costs no disk, but hashing it takes a while
#: Sparse, so it costs no disk; hashing it takes far longer than any wait in the tests.
HUGE = 64 * BIG


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def stopped(*pids: int):
    """The processes ``pids`` stopped (SIGSTOP) for the block, then continued: what
    clients do meanwhile reaches only the kernel (the connection, the listen queue)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def connections_that_fit(family: int, address, count: int) -> int:
    """How many of ``count`` connections to ``address`` a listen queue nobody takes
    from holds: each is given half a second (past a full queue a TCP handshake is
    dropped, a Unix connect() waits). All are closed at the end."""
    connected = 0
    with contextlib.ExitStack() as held:
        for _ in range(count):
            sock = held.enter_context(socket.socket(family))
            sock.settimeout(0.5)
            try:
                sock.connect(address)
            except OSError:
                continue
            connected += 1
    return connected


@contextlib.contextmanager
def scripted_server(answer, connections: int = 1):
    """A broken server made to order: a TCP listener on a free port whose first
    ``connections`` connections are each handed to ``answer(conn)``, then closed.
    Yields the port."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)

        def serve() -> None:
            with contextlib.suppress(OSError):
                for _ in range(connections):
                    conn, _ = listener.accept()
                    with conn, contextlib.suppress(OSError):
                        answer(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(30)


def sparse_file(path, size: int):
    """``path``, made a file of ``size`` bytes that takes no disk."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def lastlog_of(lines: list[bytes]) -> bytes:
    """The lastlog reply that carries ``lines``."""
    return b"Begin lastlog\n" + b"".join(line + b"\n" for line in lines) + b"End lastlog\n"


def hash_line(data: bytes) -> bytes:
    """The comhash reply for a file holding ``data``."""
    return b"File hash is : %s\n" % hashlib.sha1(data).hexdigest().encode()


def sha1_of_file(path) -> bytes:
    """The comhash reply for the file at ``path``, hashed here."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return b"File hash is : %s\n" % digest.hexdigest().encode()


def no_twisted_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import twisted`` fails, as without the extra."""
    fake = tmp_path / "no-twisted" / "twisted"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named twisted')\n")
    env = greencmd_env()
    env["PYTHONPATH"] = str(fake.parent) + os.pathsep + env["PYTHONPATH"]
    return env
