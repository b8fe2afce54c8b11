"""follow: a real tail -F of a real file, stopped every way the protocol names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import (
    HELP,
    greencmd_env,
    memory_kib,
    read_all,
    read_until,
    reset,
    sigint_as_usual,
    wait_until,
)

BAD_COUNT = b"An error occured: follow takes a line count from 1 to 1000\n"


def make_source(tmp_path, count: int = 5):
    path = tmp_path / "follow.log"
    path.write_bytes(b"".join(b"old %d\n" % i for i in range(1, count + 1)))
    return path


def append(path, *lines: bytes) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def followed(start_server, tmp_path):
    """A server whose lastlog source is a small file this test appends to."""
    source = make_source(tmp_path)

    def start(*args: str):
        return start_server("--lastlog-file", str(source), *args), source

    return start


def test_backlog_then_live_lines_then_stop_by_an_empty_line(followed):
    server, source = followed()
    with server.connect() as sock:
        sock.sendall(b"follow 2\n")
        assert read_until(sock, b"old 5\n") == b"Begin follow\nold 4\nold 5\n"
        append(source, b"new 1", b"==> not a log line <==", b"new 2")
        assert read_until(sock, b"new 2\n") == b"new 1\nnew 2\n"
        sock.sendall(b"\n")  # Enter in netcat: stop, no reply of its own
        assert read_until(sock, b"End follow\n") == b"End follow\n"
        sock.sendall(b"help\n")  # the session goes on
        assert read_until(sock, b"\n") == HELP
    wait_until(lambda: not server.children(), message="tail reaped")


def test_pipelined_lines_stop_it_once_the_backlog_is_sent(followed):
    server, _ = followed()
    # "help" is the stop line (no reply); the next help is a request.
    assert server.talk(b"follow 3\nhelp\nhelp\n") == (
        b"Begin follow\nold 3\nold 4\nold 5\nEnd follow\n" + HELP)


def test_eof_ends_the_follow_and_the_session(followed):
    server, _ = followed()
    assert server.talk(b"follow\n") == (
        b"Begin follow\n" + b"".join(b"old %d\n" % i for i in range(1, 6)) + b"End follow\n")


@pytest.mark.parametrize("arg", [b"0", b"1001", b"-1", b"x", b"1 2"])
def test_bad_count(followed, arg):
    server, _ = followed()
    assert server.talk(b"follow " + arg + b"\n") == BAD_COUNT


def test_missing_source_gets_the_lastlog_error(start_server, tmp_path):
    missing = tmp_path / "gone.log"
    server = start_server("--lastlog-file", str(missing))
    error = b"An error occured: [Errno 2] No such file or directory: '%s'\n" % bytes(missing)
    assert server.talk(b"follow\nlastlog\n") == error + error


def test_a_partial_last_line_is_sent_once_it_is_complete(followed):
    server, source = followed()
    with open(source, "ab") as f:
        f.write(b"half")
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        assert read_until(sock, b"old 5\n") == b"Begin follow\nold 5\n"
        with open(source, "ab") as f:
            f.write(b" and the rest\n")
        assert read_until(sock, b"rest\n") == b"half and the rest\n"


@pytest.mark.parametrize("how", ["rename", "delete"])
def test_a_rotated_or_recreated_file_is_followed_by_name(followed, how):
    server, source = followed()
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        read_until(sock, b"old 5\n")
        if how == "rename":
            os.rename(source, str(source) + ".1")
        else:
            os.unlink(source)
        time.sleep(0.5)
        source.write_bytes(b"fresh 1\n")
        assert read_until(sock, b"fresh 1\n").endswith(b"fresh 1\n")
        append(source, b"fresh 2")
        assert read_until(sock, b"fresh 2\n") == b"fresh 2\n"
        sock.sendall(b"\n")
        assert read_until(sock, b"End follow\n") == b"End follow\n"


def test_neither_idle_nor_command_timeout_ends_a_follow(followed):
    server, source = followed("--idle-timeout", "1", "--command-timeout", "1")
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        read_until(sock, b"old 5\n")
        time.sleep(2.5)
        append(source, b"late")
        assert read_until(sock, b"late\n") == b"late\n"
        sock.sendall(b"stop\n")
        assert read_until(sock, b"End follow\n") == b"End follow\n"


def test_shutdown_ends_a_follow_without_waiting_for_grace(followed):
    server, _ = followed("--grace", "30")
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        read_until(sock, b"old 5\n")
        started = time.monotonic()
        assert server.stop() == 0
        assert read_all(sock) == b"End follow\nServer shutting down, bye!\n"
    assert time.monotonic() - started < 10
    assert server.count_log("Reason: Server shutting down.") == 1


def test_a_reset_kills_and_reaps_tail(followed):
    server, _ = followed()
    sock = server.connect()
    sock.sendall(b"follow 1\n")
    read_until(sock, b"old 5\n")
    assert len(server.children()) == 1
    reset(sock)
    wait_until(lambda: not server.children(), message="tail killed and reaped")
    server.wait_for_log(lambda line: "Reason: Connection was reset by peer." in line)


def test_a_stop_line_that_is_too_long_stops_then_is_refused(followed):
    server, _ = followed("--max-line", "100")
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        read_until(sock, b"old 5\n")
        sock.sendall(b"x" * 500)
        assert read_all(sock) == b"End follow\nLine too long.\n"



def test_a_client_that_never_reads_stalls_only_itself_then_is_dropped(followed):
    server, source = followed("--idle-timeout", "3")
    before = memory_kib(server.proc.pid)
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"follow 1\n")
    time.sleep(0.3)
    line = b"x" * 1023
    with open(source, "ab") as f:  # 100 MiB appended while the client reads nothing
        for _ in range(100):
            f.write((line + b"\n") * 1024)
    # Another session is served meanwhile.
    assert server.talk(b"help\n") == HELP
    assert memory_kib(server.proc.pid) - before < 32 * 1024
    server.wait_for_log(lambda text: "Reason: Idle timeout." in text, timeout=20)
    wait_until(lambda: not server.children(), message="tail killed and reaped")
    assert memory_kib(server.proc.pid) - before < 32 * 1024
    sock.close()


def test_stats_counts_open_follows(followed):
    server, _ = followed()
    with server.connect() as sock:
        sock.sendall(b"follow 1\n")
        read_until(sock, b"old 5\n")
        stats = server.talk(b"stats\n")
        assert b"\nfollows_open 1\n" in stats
        sock.sendall(b"\n")
        read_until(sock, b"End follow\n")
    assert b"\nfollows_open 0\n" in server.talk(b"stats\n")


def test_the_client_prints_lines_as_they_come_and_stops_on_ctrl_c(followed):
    server, source = followed()
    client = subprocess.Popen(
        [sys.executable, "-m", "greencmd", "client", "--port", str(server.port), "--timeout", "1",
         "follow", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=greencmd_env(),
        preexec_fn=sigint_as_usual)
    try:
        assert client.stdout.readline() == b"Begin follow\n"
        assert client.stdout.readline() == b"old 4\n"
        assert client.stdout.readline() == b"old 5\n"
        time.sleep(1.5)  # longer than nothing: the reply timeout does not apply
        append(source, b"live")
        assert client.stdout.readline() == b"live\n"
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
    assert out == b"End follow\n"
    assert err == b""
    assert client.returncode == 0
