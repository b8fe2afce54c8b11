"""systemd: socket activation and readiness, with systemd-socket-activate and a NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import HELP, free_port, greencmd_env, read_all, run_greencmd, wait_until


@pytest.fixture
def notify(tmp_path):
    """The datagram socket a service manager listens on for readiness notices."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(15)
    yield sock
    sock.close()


def activate(engine: str, listen: list[str], tmp_path, *args: str,
             env: dict[str, str] | None = None) -> subprocess.Popen:
    """``systemd-socket-activate -l ADDR ... greencmd serve ARGS`` (it execs on the first
    connection and passes the listening sockets)."""
    extra = []
    for name, value in {"PYTHONPATH": greencmd_env()["PYTHONPATH"], **(env or {})}.items():
        extra += ["-E", "%s=%s" % (name, value)]
    command = ["systemd-socket-activate", *[f"--listen={a}" for a in listen], *extra,
               sys.executable, "-m", "greencmd", "serve", "--engine", engine, "--log-file",
               str(tmp_path / "server.log"), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    listening = 0
    while listening < len(listen):  # it says so once per socket, before anyone connects
        line = proc.stdout.readline()
        assert line, "systemd-socket-activate ended before listening"
        listening += line.startswith(b"Listening on ")
    return proc


def stop(proc: subprocess.Popen) -> bytes:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def test_serves_the_tcp_socket_systemd_passes_and_says_ready(engine, tmp_path, notify):
    port = free_port()
    proc = activate(engine, ["127.0.0.1:%d" % port], tmp_path,
                    env={"NOTIFY_SOCKET": notify.getsockname(), "WATCHDOG_USEC": "400000"})
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"help\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == HELP
        assert notify.recv(4096) == b"READY=1\nSTATUS=Serving on 127.0.0.1:%d" % port
        ticks = [notify.recv(4096) for _ in range(2)]  # every 0.2 s: half WATCHDOG_USEC
        assert all(t.startswith(b"STATUS=Serving, ") and t.endswith(b"\nWATCHDOG=1")
                   for t in ticks), ticks
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out[-2000:]
    notices = []
    notify.settimeout(0.5)
    try:
        while True:
            notices.append(notify.recv(4096))
    except TimeoutError:
        pass
    assert b"STOPPING=1\nSTATUS=Shutting down" in notices
    assert b"starting on 127.0.0.1:%d" % port in out


def test_a_metrics_port_it_cannot_have_ends_it_before_any_client_is_served(engine, tmp_path):
    # A client already waits on the socket systemd passes. asyncio accepted it and
    # answered its request, then failed on the metrics port and cancelled the session
    # mid-way (a complaint in the log): the other engines bound the metrics port first.
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken, port = busy.getsockname()[1], free_port()
        proc = activate(engine, ["127.0.0.1:%d" % port], tmp_path,
                        "--metrics", "127.0.0.1:%d" % taken)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"help\n")
            out, _ = proc.communicate(timeout=30)
            try:
                reply = read_all(sock)
            except ConnectionResetError:  # never accepted: the kernel resets it
                reply = b""
            assert reply == b""
    assert proc.returncode == 1
    assert b"greencmd: cannot listen on 127.0.0.1:%d: address already in use" % taken in out
    assert b"Client connection" not in out and b"asyncio:" not in out


def test_serves_a_unix_socket_systemd_passes(engine, tmp_path):
    path = tmp_path / "greencmd.sock"
    proc = activate(engine, [str(path)], tmp_path)
    try:
        wait_until(path.exists, 10, "the socket file")
        client = run_greencmd("client", "--unix", str(path), "help")
        assert (client.returncode, client.stdout) == (0, HELP), client.stderr
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out[-2000:]
    assert b"starting on unix:%s" % bytes(path) in out


def test_an_explicit_port_that_matches_no_passed_socket_is_exit_2(engine, tmp_path):
    port, other = free_port(), free_port()
    proc = activate(engine, ["127.0.0.1:%d" % port], tmp_path, "--port", str(other))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15):
            pass
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert b"systemd passed 1 socket(s), and none is the one asked for (--port %d)" % other in out
    assert b"Traceback" not in out


def test_of_two_passed_sockets_the_asked_one_serves_and_the_other_is_closed(engine, tmp_path):
    port, other = free_port(), free_port()
    proc = activate(engine, ["127.0.0.1:%d" % other, "127.0.0.1:%d" % port], tmp_path,
                    "--port", str(port))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"help\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == HELP
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", other), timeout=5).close()
    finally:
        out = stop(proc)
    assert proc.returncode == 0
    assert b"Closing a socket systemd passed that matches nothing: 127.0.0.1:%d" % other in out
    assert os.path.exists(tmp_path / "server.log")
