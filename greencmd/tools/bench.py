"""``greencmd bench``: a load generator for any server that speaks docs/protocol.md.

One thread, one epoll loop, non-blocking sockets: cheaper per request than any
server it measures, and it reports its own CPU use so that a saturated load
generator shows up in the results instead of hiding in them. Every reply is
checked byte for byte; a wrong one counts as an error and is printed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import select
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..client.single import authenticate
from ..core import protocol

__all__ = ["SCENARIOS", "DEFAULT_SCENARIOS", "Result", "run_scenario", "format_table", "as_json"]

NOT_FOUND = protocol.COMMAND_NOT_FOUND
#: Share of one CPU above which the load generator may be what limits a result.
SATURATED = 0.9


@dataclass
class Result:
    """What one scenario measured; ``rate`` is per second of wall time."""

    scenario: str
    unit: str
    rate: float = 0.0
    count: int = 0
    seconds: float = 0.0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    loadgen_cpu: float = 0.0
    server_cpu: float | None = None
    server_us_per_op: float | None = None

    def error(self, message: str) -> None:
        """Count an error; keep the first few different ones for the report."""
        self.errors += 1
        if len(self.examples) < 5 and message not in self.examples:
            self.examples.append(message)


def why_wrong(reply: bytes, expected: bytes | None, connections: int) -> str:
    """Why ``reply`` is not the one expected, in one sentence.

    ``expected`` None: any framed ``lastlog`` reply is right (its lines may move).
    """
    if reply == protocol.TOO_MANY:
        return ("the server refused a connection (Too many connections): start it with "
                "--max-clients %d or more, or bench with fewer --connections" % connections)
    if expected is None and protocol.is_error_reply(reply):
        return "error reply %r" % reply[:120]
    return "unexpected reply %r" % reply[:120]


def lastlog_framed(reply: bytes) -> bool:
    """True for a whole ``lastlog`` reply, whatever lines it carries."""
    return reply.startswith(protocol.LASTLOG_BEGIN) and reply.endswith(protocol.LASTLOG_END)


def reply_complete(buffer: bytes | bytearray) -> bool:
    """True once ``buffer`` holds a whole reply (lastlog ends with its End line)."""
    if not buffer.endswith(b"\n"):
        return False
    return not buffer.startswith(protocol.LASTLOG_BEGIN) or buffer.endswith(protocol.LASTLOG_END)


def _percentiles(result: Result, latencies: list[float]) -> None:
    if latencies:
        latencies.sort()
        result.p50_ms = latencies[len(latencies) // 2] * 1000
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def _connect(address: tuple[str, int], token: bytes | None = None,
             tls: ssl.SSLContext | None = None, timeout: float = 10) -> socket.socket:
    """A connection (over TLS with ``tls``), authenticated first when the server wants a
    token (raises Refused)."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=address[0])
    if token is not None:
        try:
            authenticate(sock, token)
        except BaseException:
            sock.close()
            raise
    return sock


@contextmanager
def _connections(address: tuple[str, int], count: int, token: bytes | None,
                 tls: ssl.SSLContext | None) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            socks.append(_connect(address, token, tls))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_loop(socks: list[socket.socket], request: bytes, expected: bytes | None,
                seconds: float, result: Result) -> None:
    """Each connection sends ``request``, awaits the whole reply, and again.

    ``expected=None`` accepts any framed ``lastlog`` reply (a server's lastlog
    source may move while it is measured, its own log does); an error reply is
    an error. This is the load generator's hot loop: raw fds, and a fast path for
    a reply that arrives whole in one read, so it stays cheaper than the server.
    """
    poller = select.epoll(len(socks))
    buffers: dict[int, bytes] = {}
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    read, write, clock = os.read, os.write, time.perf_counter
    if socks and isinstance(socks[0], ssl.SSLSocket):  # records, not raw bytes
        read, write = _tls_io({sock.fileno(): sock for sock in socks})
    for sock in socks:
        sock.setblocking(False)
        buffers[sock.fileno()] = b""
        poller.register(sock.fileno(), select.EPOLLIN)
    start = clock()
    deadline = start + seconds
    for fd in buffers:
        sent_at[fd] = clock()
        write(fd, request)
    count = 0
    try:
        while buffers:
            now = clock()
            if now >= deadline:
                break
            for fd, _ in poller.poll(deadline - now):
                try:
                    data = read(fd, 262144)
                except ssl.SSLWantReadError:
                    continue  # part of a TLS record: the rest comes with the next read
                except OSError as exc:
                    data, why = b"", str(exc)
                else:
                    why = "server closed the connection"
                if data == expected and not buffers[fd]:
                    now = clock()
                    latencies.append(now - sent_at[fd])
                    count += 1
                    sent_at[fd] = now
                    write(fd, request)
                    continue
                if not data:
                    result.error(why)
                    poller.unregister(fd)
                    del buffers[fd]
                    continue
                buffer = buffers[fd] + data
                if not reply_complete(buffer):
                    buffers[fd] = buffer
                    continue
                now = clock()
                latencies.append(now - sent_at[fd])
                if buffer == expected or expected is None and lastlog_framed(buffer):
                    count += 1
                else:
                    result.error(why_wrong(buffer, expected, len(socks)))
                buffers[fd] = b""
                sent_at[fd] = now
                write(fd, request)
    finally:
        poller.close()
        result.seconds = clock() - start
        for sock in socks:
            sock.setblocking(True)
    result.count = count
    result.rate = count / result.seconds
    _percentiles(result, latencies)


def _tls_io(by_fd: dict[int, ssl.SSLSocket]):
    """``read(fd, n)`` and ``write(fd, data)`` for the closed loop, through TLS sockets.

    A read takes what TLS has decrypted beyond the first record too: epoll does not
    wake for data already inside the TLS layer.
    """
    def read(fd: int, size: int) -> bytes:
        sock = by_fd[fd]
        data = sock.recv(size)
        while data and sock.pending():
            data += sock.recv(size)
        return data

    def write(fd: int, data: bytes) -> None:
        by_fd[fd].sendall(data)

    return read, write


def run_closed_loop(address: tuple[str, int], options, request: bytes,
                    expected: bytes | None, result: Result) -> Result:
    """:func:`closed_loop` on ``options.connections`` new connections, closed after."""
    with _connections(address, options.connections, options.token, options.tls) as socks:
        closed_loop(socks, request, expected, options.seconds, result)
    return result


def unknown(address, options) -> Result:
    """C connections in a closed loop, each asking an unknown command."""
    result = Result("unknown", "replies/s", extra={"connections": options.connections})
    return run_closed_loop(address, options, b"nope\n", NOT_FOUND, result)


def pipeline(address, options) -> Result:
    """K lines in one write on one connection, then all K replies; again."""
    lines = options.lines
    result = Result("pipeline", "lines/s", extra={"lines": lines})
    request, expected = b"nope\n" * lines, NOT_FOUND * lines
    with _connect(address, options.token, options.tls) as sock:
        start = time.perf_counter()
        deadline = start + options.seconds
        rounds = 0
        while time.perf_counter() < deadline or rounds == 0:
            reply = _exchange(sock, request, len(expected))
            if reply != expected:
                result.error("pipelined replies differ (%d bytes, %d expected)"
                             % (len(reply), len(expected)))
                break
            rounds += 1
        result.seconds = time.perf_counter() - start
    result.count = rounds * lines
    result.rate = result.count / result.seconds
    return result


def _exchange(sock: socket.socket, request: bytes, size: int) -> bytes:
    """Send ``request`` while reading, until ``size`` bytes came back or EOF."""
    view, got = memoryview(request), bytearray()
    while len(got) < size:
        writers = [sock] if view else []
        readable, writable, _ = select.select([sock], writers, [], 30)
        if not readable and not writable:
            break
        if writable:
            view = view[sock.send(view[:262144]):]
        if readable:
            data = sock.recv(1 << 20)
            if not data:
                break
            got += data
    return bytes(got)


def churn(address, options) -> Result:
    """Connect, send ``exit``, wait for the server to close; C at a time.

    With ``--rate``, a new connection starts only when the schedule says
    (``rate`` per second, still at most C at a time): every server then gets the
    same load, and its CPU per connection is compared at equal work. Without
    it, each connection that ends starts the next at once (the server's rate).

    With ``--busy-poll``, this process polls without ever sleeping. On loopback
    the server's ``close()`` delivers its FIN in the server's own system call,
    and waking a load generator asleep in ``epoll_wait`` is then paid from the
    server's CPU time, more often the slower the server (docs/performance.md);
    a load generator that never sleeps needs no waking, so each server is
    charged for its own work only.
    """
    rate = options.rate
    timeout_cap = 0.0 if options.busy_poll else 0.5
    extra: dict[str, object] = {"concurrency": options.connections}
    if rate:
        extra["offered_per_second"] = rate
    if options.busy_poll:
        extra["busy_poll"] = True
    result = Result("churn", "connections/s", extra=extra)
    poller = select.epoll()
    live: dict[int, socket.socket] = {}
    opened = 0

    def open_one() -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            result.error("connect: %s" % os.strerror(code))
            sock.close()
            return
        live[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLOUT)

    def top_up(now: float) -> float:
        """Open the connections due by ``now``; how long until the next is due."""
        nonlocal opened
        while len(live) < options.connections:
            if rate and opened >= (now - start) * rate:
                return (opened / rate + start) - now
            open_one()
            opened += 1
        return 0.5

    start = time.perf_counter()
    deadline = start + options.seconds
    while (now := time.perf_counter()) < deadline:
        wait = top_up(now)
        for fd, events in poller.poll(min(wait, timeout_cap)):
            sock = live[fd]
            if events & select.EPOLLOUT:
                poller.modify(fd, select.EPOLLIN)
                try:
                    sock.send(b"exit\n")
                except OSError as exc:
                    result.error("send: %s" % exc)
                continue
            try:
                data = sock.recv(4096)
            except OSError as exc:
                data = ("%s" % exc).encode()
            if data:
                result.error("exit got a reply: %r" % data[:80])
            else:
                result.count += 1
            poller.unregister(fd)
            del live[fd]
            sock.close()
            top_up(time.perf_counter())  # unpaced: the next connection starts at once
    for sock in live.values():
        sock.close()
    poller.close()
    result.seconds = time.perf_counter() - start
    result.rate = result.count / result.seconds
    return result


def comhash(address, options) -> Result:
    """C clients hashing one file it creates; MB/s beside hashlib's single thread."""
    size = options.size_mib << 20
    result = Result("comhash", "MB/s", extra={"clients": options.connections,
                                              "file_mib": options.size_mib})
    with tempfile.NamedTemporaryFile(dir=options.directory, prefix="greencmd-bench-") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(options.size_mib):
            f.write(chunk)
        f.flush()
        started = time.perf_counter()
        digest = hashlib.sha1()
        with open(f.name, "rb") as again:
            while block := again.read(1 << 20):
                digest.update(block)
        hashlib_rate = size / (time.perf_counter() - started) / 1e6
        expected = protocol.hash_reply(digest.hexdigest())
        run_closed_loop(address, options, b"comhash %s\n" % os.fsencode(f.name), expected,
                        result)
    result.rate = result.count * size / result.seconds / 1e6
    result.extra["hashlib_single_thread_mb_s"] = round(hashlib_rate, 1)
    result.extra["vs_hashlib"] = round(result.rate / hashlib_rate, 2)
    return result


def lastlog(address, options) -> Result:
    """C clients asking ``lastlog`` in a loop; any framed reply counts, errors do not.

    The bench cannot choose the server's lastlog source, which may move as it is
    measured (a server tailing its own log), so replies are checked by form.
    """
    result = Result("lastlog", "replies/s", extra={"clients": options.connections})
    return run_closed_loop(address, options, b"lastlog\n", None, result)


def idle(address, options) -> Result:
    """N idle sessions: server RSS per session, and ``unknown`` beside them."""
    count = options.idle
    result = Result("idle", "replies/s", extra={"idle_sessions": count})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    before = _rss_kib(options.server_pid)
    held = []
    try:
        for start in range(0, count, 500):
            batch = [_connect(address, options.token, options.tls)
                     for _ in range(min(500, count - start))]
            for sock in batch:
                sock.send(b"help\n")
            for sock in batch:
                reply = _read_reply(sock)
                # Configured and plugin commands follow the built-ins in the line.
                if not reply.startswith(protocol.HELP[:-1]) or not reply.endswith(b"\n"):
                    result.error(why_wrong(reply, protocol.HELP, count))
            held += batch
            _progress("idle: %d sessions open" % len(held))
        time.sleep(0.5)
        after = _rss_kib(options.server_pid)
        if before is not None and after is not None:
            result.extra["rss_kib_per_session"] = round((after - before) / count, 2)
        beside = unknown(address, options)
        result.count, result.seconds, result.rate = beside.count, beside.seconds, beside.rate
        result.p50_ms, result.p99_ms = beside.p50_ms, beside.p99_ms
        result.errors += beside.errors
        result.examples += beside.examples
    finally:
        for sock in held:
            sock.close()
    return result


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not reply_complete(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time used so far by process ``pid`` (all its threads), from /proc."""
    if pid is None:
        return None
    with open("/proc/%d/stat" % pid, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text)
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def as_json(results: list[Result]) -> list[dict]:
    """The results as plain data, for ``--json``; a scenario with errors has no figures."""
    return [asdict(r) if not r.errors else
            dict(asdict(r), rate=None, p50_ms=None, p99_ms=None, server_us_per_op=None,
                 extra={}) for r in results]


SCENARIOS = {"unknown": unknown, "pipeline": pipeline, "churn": churn, "comhash": comhash,
             "lastlog": lastlog, "idle": idle}
#: What runs when no scenario is named: idle needs thousands of descriptors.
DEFAULT_SCENARIOS = ("unknown", "pipeline", "churn", "comhash", "lastlog")


def run_scenario(name: str, address: tuple[str, int], options) -> Result:
    """Run one scenario; the result records the load generator's own CPU share."""
    _progress("bench: %s against %s:%d ..." % (name, *address))
    before = resource.getrusage(resource.RUSAGE_SELF)
    server_before = _cpu_seconds(options.server_pid)
    started = time.perf_counter()
    result = SCENARIOS[name](address, options)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.loadgen_cpu = round(cpu / wall, 2)
    server_after = _cpu_seconds(options.server_pid)
    if server_before is not None and server_after is not None:
        result.server_cpu = round((server_after - server_before) / wall, 2)
        if result.count:
            result.server_us_per_op = round((server_after - server_before) / result.count
                                            * 1e6, 2)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    return result


def format_table(results: list[Result]) -> str:
    """The results as a table for people."""
    rows = [("scenario", "rate", "unit", "p50 ms", "p99 ms", "errors", "loadgen CPU",
             "server CPU", "server µs/op", "notes")]
    for r in results:
        if r.errors:  # a figure beside wrong replies would mislead: only the errors
            rows.append((r.scenario, "-", r.unit, "-", "-", str(r.errors), "-", "-", "-",
                         "no figures: see the errors below"))
            continue
        notes = ", ".join("%s=%s" % item for item in r.extra.items())
        if r.loadgen_cpu >= SATURATED:
            notes += " (load generator saturated: the server may be faster)"
        rows.append((r.scenario, "%.1f" % r.rate, r.unit, _ms(r.p50_ms), _ms(r.p99_ms),
                     str(r.errors), "%d%%" % (r.loadgen_cpu * 100),
                     "-" if r.server_cpu is None else "%d%%" % (r.server_cpu * 100),
                     "-" if r.server_us_per_op is None else "%.1f" % r.server_us_per_op,
                     notes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for r in results:
        lines += ["%s error: %s" % (r.scenario, example) for example in r.examples]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else "%.2f" % value
