"""Connection limits: max clients, idle timeout, many sessions at once."""

import os
import socket
import time

import pytest
from conftest import HELP, read_all, read_until

from greencmd.core.settings import REFUSING

TOO_MANY = b"Too many connections, bye!\n"
IDLE = b"Idle timeout, bye!\n"


def open_session(server) -> socket.socket:
    sock = server.connect()
    sock.sendall(b"help\n")
    assert read_until(sock, b"\n") == HELP
    return sock


def test_nth_client_accepted_and_next_refused(start_server):
    server = start_server("--max-clients", "3")
    sessions = [open_session(server) for _ in range(3)]
    with server.connect() as refused:
        assert read_all(refused) == TOO_MANY
    server.wait_for_log(lambda line: "Reason: Refused: too many connections." in line)
    # Refused ones count in the session number too: 0, 1, 2 served, 3 refused.
    server.wait_for_log(lambda line: "[CmdSession,3,127.0.0.1] Lost client connection" in line)
    for sock in sessions:
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP
    sessions.pop().close()
    server.wait_for_log(lambda line: "Reason: Connection was closed cleanly." in line)
    fresh = open_session(server)
    fresh.close()
    for sock in sessions:
        sock.close()


def test_refused_client_with_a_request_already_sent_still_reads_the_refusal(start_server):
    server = start_server("--max-clients", "1")
    held = open_session(server)
    with server.connect() as sock:
        sock.sendall(b"help\n" * 1000)
        assert read_all(sock) == TOO_MANY
    held.close()


def test_idle_session_is_closed_with_a_message(start_server):
    server = start_server("--idle-timeout", "0.5")
    with server.connect() as sock:
        assert read_all(sock) == IDLE
    server.wait_for_log(lambda line: "Reason: Idle timeout." in line)


def test_trickled_bytes_without_a_line_do_not_reset_the_idle_clock(start_server):
    server = start_server("--idle-timeout", "1")
    with server.connect() as sock:
        sock.settimeout(0.2)
        got = b""
        for _ in range(50):  # 10 s at most; the server must give up after ~1 s
            try:
                sock.sendall(b"h")
                chunk = sock.recv(100)
            except TimeoutError:
                continue
            except OSError:
                break
            got += chunk
            if not chunk or got.endswith(IDLE):
                break
        assert got == IDLE


def test_idle_clock_does_not_run_while_a_command_is_answered(start_server, tmp_path):
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    server = start_server("--idle-timeout", "1", "--command-timeout", "2.5",
                          "--lastlog-file", str(fifo))
    with server.connect() as sock:
        sock.sendall(b"lastlog\n")
        reply = read_until(sock, b"\n")
        assert reply.startswith(b"An error occured: lastlog of")
        # Only after the reply does the idle clock start again.
        started = time.monotonic()
        assert read_all(sock) == IDLE
        assert time.monotonic() - started >= 0.9


def test_idle_timeout_zero_disables_it(start_server):
    server = start_server("--idle-timeout", "0")
    with server.connect() as sock:
        sock.settimeout(1.5)
        try:
            data = sock.recv(100)
        except TimeoutError:
            data = None
        assert data is None
        sock.sendall(b"help\n")
        sock.settimeout(10)
        assert read_until(sock, b"\n") == HELP


def test_five_hundred_concurrent_sessions(start_server):
    server = start_server("--max-clients", "500", "--quiet")
    socks = [server.connect(timeout=30) for _ in range(500)]
    try:
        for sock in socks:
            sock.sendall(b"help\nnope\n")
        for sock in socks:
            assert read_until(sock, b"found.\n") == HELP + b"Command not found.\n"
        # All 500 are open at once, so one more is refused.
        with server.connect() as extra:
            assert read_all(extra) == TOO_MANY
    finally:
        for sock in socks:
            sock.close()
    server.wait_for_count("Lost client connection", 501)
    assert server.count_log("Client connection from") == 501


def test_sessions_freed_after_a_burst_of_clients_leave(start_server):
    server = start_server("--max-clients", "5")
    for round_ in range(4):
        socks = [open_session(server) for _ in range(5)]
        for sock in socks:
            sock.close()
        # Every slot must be free again before the next five arrive.
        server.wait_for_count("closed cleanly", 5 * (round_ + 1))
    open_session(server).close()


@pytest.mark.engines("gevent", "asyncio")
def test_a_flood_past_the_bound_waits_in_the_listen_queue_then_is_refused(start_server):
    """Past max clients' sessions and REFUSING refusals in progress, the server stops
    accepting: the rest of a flood waits in the kernel's queue, not in the server,
    and is refused in its turn once refusals end.

    gevent and asyncio, whose bound is exact (each counts at its accept). The twin
    stops reading at the bound, but Twisted accepts in batches (up to
    ``Port.numberAccepts`` per wake-up), so it can take a batch more
    (docs/compare.md, "limits").
    """
    server = start_server("--max-clients", "1", "--quiet")
    held = open_session(server)
    bound = 1 + REFUSING
    # None of them reads or closes: each refusal lingers LINGER_SECONDS.
    flood = [server.connect(timeout=30) for _ in range(bound + 60)]
    try:
        server.wait_for_count("Client connection from", bound)
        time.sleep(0.3)  # what would be accepted past the bound has been by now (in ms)
        assert server.count_log("Client connection from") == bound
        for sock in flood:
            assert read_all(sock) == TOO_MANY
        server.wait_for_count("Client connection from", 1 + len(flood))
        held.sendall(b"help\n")
        assert read_until(held, b"\n") == HELP
    finally:
        for sock in flood:
            sock.close()
        held.close()
