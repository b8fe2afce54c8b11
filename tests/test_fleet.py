"""The client for many servers: real servers, one that never answers, hosts files, follow."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
from conftest import (
    HELP,
    Server,
    free_port,
    greencmd_env,
    lastlog_of,
    memory_kib,
    run_greencmd,
    scripted_server,
    wait_until,
)

NOT_FOUND = b"Command not found.\n"


@pytest.fixture
def servers(tmp_path):
    """Start gevent servers (the fleet client is tested once, not per engine)."""
    started: list[Server] = []

    def start(count: int, *args: str) -> list[Server]:
        for _ in range(count):
            directory = tmp_path / ("s%d" % len(started))
            directory.mkdir()
            (directory / "app.log").write_bytes(b"old line\n")
            started.append(Server(["--port", "0", "--log-file", "", "--lastlog-file",
                                   str(directory / "app.log"), *args], directory,
                                  greencmd_env()))
        return started[-count:]

    yield start
    for server in started:
        assert server.stop() == 0
        assert not server.complaints()


def hosts(found: list[Server]) -> list[str]:
    args = []
    for server in found:
        args += ["--host", "127.0.0.1:%d" % server.port]
    return args


def labels(found: list[Server]) -> list[bytes]:
    return [b"127.0.0.1:%d" % server.port for server in found]


def test_every_server_answers_in_one_block_with_its_name(servers):
    found = servers(3)
    result = run_greencmd("client", *hosts(found), "lastlog", "1")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for label in labels(found):
        block = [line for line in lines if line.startswith(label + b": ")]
        assert block == [label + b": Begin lastlog", label + b": old line",
                         label + b": End lastlog"]
        start = lines.index(block[0])
        assert lines[start:start + 3] == block  # one block, not interleaved
    assert result.stderr == b"3 servers: 3 ok, 0 error replies, 0 unreachable\n"


def test_error_replies_exit_1(servers):
    found = servers(2)
    result = run_greencmd("client", *hosts(found), "nonsense")
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == sorted(
        label + b": Command not found." for label in labels(found))
    assert result.stderr == b"2 servers: 0 ok, 2 error replies, 0 unreachable\n"



def test_an_unreachable_server_is_one_line_and_exit_3(servers):
    found = servers(1)
    dead = free_port()
    result = run_greencmd("client", *hosts(found), "--host", "127.0.0.1:%d" % dead, "help")
    assert result.returncode == 3
    assert b"127.0.0.1:%d: error: connection refused\n" % dead in result.stdout
    assert labels(found)[0] + b": " + HELP in result.stdout
    assert result.stderr == b"2 servers: 1 ok, 0 error replies, 1 unreachable\n"


def test_a_server_that_never_answers_times_out_while_the_others_print(servers):
    found = servers(2)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never speaks
    port = silent.getsockname()[1]
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "greencmd", "client", *hosts(found), "--host",
             "127.0.0.1:%d" % port, "--timeout", "3", "help"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=greencmd_env())
        first = client.stdout.readline()  # printed before the silent one gives up
        assert first.split(b": ", 1)[0] in labels(found)
        out, err = client.communicate(timeout=30)
    finally:
        silent.close()
    assert client.returncode == 3
    assert out.endswith(b"127.0.0.1:%d: error: no reply within 3 seconds\n" % port)
    assert err == b"3 servers: 2 ok, 0 error replies, 1 unreachable\n"


def test_json_is_one_object_per_server(servers):
    found = servers(2)
    dead = free_port()
    result = run_greencmd("client", *hosts(found), "--host", "127.0.0.1:%d" % dead, "--json",
                          "help")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    by_port = {record["port"]: record for record in records}
    for server in found:
        record = by_port[server.port]
        assert record["host"] == "127.0.0.1" and record["exit"] == 0
        assert record["reply"] == HELP.decode() and record["error"] is None
        assert isinstance(record["seconds"], float)
    assert by_port[dead]["exit"] == 3 and by_port[dead]["reply"] == ""
    assert by_port[dead]["error"] == "connection refused"
    assert result.returncode == 3


def test_a_hosts_file_with_duplicates_blanks_comments_and_ipv6(servers, tmp_path):
    found = servers(2)
    path = tmp_path / "hosts"
    path.write_text("# the fleet\n\n127.0.0.1:%d\n  127.0.0.1:%d  \n127.0.0.1:%d\n"
                    "[::1]:%d\n" % (found[0].port, found[0].port, found[1].port,
                                    free_port()))
    result = run_greencmd("client", "--hosts-file", str(path), "help")
    assert result.stderr.startswith(b"3 servers: 2 ok, 0 error replies, 1 unreachable")
    assert result.stdout.count(HELP) == 2


@pytest.mark.parametrize("line, words", [
    ("host:99999", b"bad port '99999'"),
    ("host:", b"bad port ''"),
    ("host:x", b"bad port 'x'"),
    ("[::1]:abc", b"bad port 'abc'"),
    ("a b", b"'b' is not a setting (key=value"),
    ("[::1", b"is not HOST, HOST:PORT or [IPV6]:PORT"),
])
def test_a_bad_hosts_file_line_is_a_usage_error(tmp_path, line, words):
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1\n%s\n" % line)
    result = run_greencmd("client", "--hosts-file", str(path), "help")
    assert result.returncode == 2
    assert words in result.stderr and b"line 2" in result.stderr


def test_a_default_port_is_left_out_of_the_name(servers):
    found = servers(2)
    result = run_greencmd("client", "--port", str(found[0].port), "--host", "127.0.0.1",
                          "--host", "localhost", "help")
    assert sorted(result.stdout.splitlines()) == [b"127.0.0.1: " + HELP.strip(),
                                                  b"localhost: " + HELP.strip()]


def test_requests_from_stdin_with_several_servers_are_a_usage_error():
    result = run_greencmd("client", "--host", "a", "--host", "b", input=b"help\n")
    assert result.returncode == 2
    assert b"requests from stdin go to one server only" in result.stderr


def test_servers_are_asked_at_once_not_one_after_another(servers, tmp_path):
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    config = tmp_path / "meet.toml"
    # Each server's command waits until all three are running at once.
    config.write_text('[commands.meet]\nrun = ["sh", "-c", "touch %s/$$; while [ $(ls %s | '
                      'wc -l) -lt 3 ]; do sleep 0.05; done; echo met"]\n' % (meeting, meeting))
    found = servers(3, "--config", str(config), "--command-timeout", "20")
    result = run_greencmd("client", *hosts(found), "--timeout", "30", "meet")
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(b": met\n") == 3


def test_follow_prints_lines_as_they_arrive_and_ctrl_c_stops_all(servers, tmp_path):
    found = servers(2)
    client = subprocess.Popen([sys.executable, "-m", "greencmd", "client", *hosts(found),
                               "follow", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=greencmd_env())
    try:
        seen = {client.stdout.readline() for _ in range(4)}
        assert seen == {label + b": " + text for label in labels(found)
                        for text in (b"Begin follow\n", b"old line\n")}
        with open(tmp_path / "s1" / "app.log", "ab") as f:
            f.write(b"fresh line\n")
        assert client.stdout.readline() == labels(found)[1] + b": fresh line\n"
        time.sleep(0.2)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
    assert sorted(out.splitlines()) == sorted(label + b": End follow" for label in labels(found))
    assert err == b"2 servers: 2 ok, 0 error replies, 0 unreachable\n"
    assert client.returncode == 0


@contextlib.contextmanager
def following(found: list[Server], printed):
    """A fleet ``follow 1`` of ``found`` printing into the file ``printed``, once both
    backlogs are printed; stopped with Ctrl-C at the end (its stderr left to read)."""
    with printed.open("wb") as out:
        client = subprocess.Popen([sys.executable, "-m", "greencmd", "client", *hosts(found),
                                   "follow", "1"],
                                  stdout=out, stderr=subprocess.PIPE, env=greencmd_env())
    try:
        wait_until(lambda: printed.read_bytes().count(b"old line\n") == len(found), 20,
                   "backlogs")
        yield client
        client.send_signal(signal.SIGINT)
        client.wait(15)
    finally:
        if client.poll() is None:
            client.kill()


def test_a_long_follow_of_many_servers_keeps_no_copy_of_what_it_printed(servers, tmp_path):
    # Lines are printed as they come; a follow left running for days must not also
    # keep every one in memory (40 MiB per server here, 80 MiB in all).
    found = servers(2)
    printed = tmp_path / "printed"
    with following(found, printed) as client:
        before = memory_kib(client.pid)
        line = b"x" * 1023 + b"\n"
        for server in ("s0", "s1"):
            with open(tmp_path / server / "app.log", "ab") as f:
                for _ in range(40):
                    f.write(line * 1024)
                f.write(b"last line\n")
        wait_until(lambda: printed.read_bytes().count(b": last line\n") == 2, 120,
                   "every line printed")
        grown = memory_kib(client.pid, "VmHWM") - before
    assert printed.read_bytes().count(b"x" * 1023 + b"\n") == 2 * 40 * 1024
    assert grown < 20 * 1024, "the client grew by %d KiB" % grown
    assert client.stderr.read() == b"2 servers: 2 ok, 0 error replies, 0 unreachable\n"


def test_a_followed_line_over_64_kib_is_printed_in_pieces(servers, tmp_path):
    found = servers(2)
    printed = tmp_path / "printed"
    with following(found, printed):
        with open(tmp_path / "s0" / "app.log", "ab") as f:
            f.write(b"z" * (1 << 20) + b"\nlast line\n")
        wait_until(lambda: b": last line\n" in printed.read_bytes(), 60, "the line printed")
    prefix = labels(found)[0] + b": "
    pieces = [line[len(prefix):] for line in printed.read_bytes().splitlines()
              if line.startswith(prefix + b"z")]
    assert b"".join(pieces) == b"z" * (1 << 20)
    assert len(pieces) >= 8 and all(len(piece) <= 2 * 65536 for piece in pieces)


def test_a_server_that_never_ends_its_reply_is_stopped_not_kept(tmp_path):
    # A reply is kept until it is whole (to be printed as one block); a broken server
    # that streams for ever must not fill the client's memory.
    def stream_for_ever(conn: socket.socket) -> None:
        conn.recv(100)
        while True:  # until the client hangs up
            conn.sendall(b"y" * 65535 + b"\n")

    with scripted_server(stream_for_ever) as port:
        result = run_greencmd("client", "--host", "127.0.0.1:%d" % port, "--json", "help",
                              timeout=120)
    outcome = json.loads(result.stdout)
    assert (result.returncode, outcome["exit"], outcome["reply"]) == (3, 3, "")
    assert outcome["error"] == "sent over 64 MiB without ending its reply; stopped"


@pytest.mark.parametrize("mode", ["blocks", "json", "gather"])
def test_replies_already_printed_are_not_kept(tmp_path, mode):
    # Eight servers send the same 8 MiB reply, then a ninth holds the client waiting.
    # By then the eight were printed (with --gather, one copy is kept to print at the
    # end): the client must not hold 64 MiB of replies it is done with, as a fleet of
    # a thousand would hold gigabytes.
    from greencmd.client import fleet
    from greencmd.client.hosts import Target

    reply = lastlog_of([b"x" * 1023] * (8 << 10))
    closed = threading.Semaphore(0)
    kept: list[int] = []

    def answer(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # b"" once the client has read it all and closed
        closed.release()

    def answer_last(conn: socket.socket) -> None:
        conn.recv(100)
        for _ in range(8):
            closed.acquire(timeout=60)
        deadline = time.monotonic() + 10  # the client's main greenlet takes them in
        while time.monotonic() < deadline:
            kept.append(tracemalloc.get_traced_memory()[0])
            if kept[-1] < 20 << 20:
                break
            time.sleep(0.05)
        conn.sendall(lastlog_of([b"last"]))

    with contextlib.ExitStack() as stack, (tmp_path / "printed").open("w+b") as out:
        ports = [stack.enter_context(scripted_server(answer)) for _ in range(8)]
        ports.append(stack.enter_context(scripted_server(answer_last)))
        found = fleet.profiles([Target("127.0.0.1", port, "s%d" % port) for port in ports],
                               None, None, 60)
        tracemalloc.start()
        try:
            status = fleet.run(found, b"lastlog", 32, out, io.StringIO(),
                               as_json=mode == "json", gather=mode == "gather")
        finally:
            tracemalloc.stop()
        out.seek(0)
        printed = out.read()
    assert status == 0
    assert printed.count(b"End lastlog") == (2 if mode == "gather" else 9)
    assert min(kept) < 20 << 20, "the client kept %d MiB" % (min(kept) >> 20)


def test_one_host_may_carry_its_port(servers):
    found = servers(1)
    result = run_greencmd("client", "--host", "127.0.0.1:%d" % found[0].port, "help")
    assert (result.returncode, result.stdout, result.stderr) == (0, HELP, b"")
    result = run_greencmd("client", "--host", "127.0.0.1:x", "help")
    assert result.returncode == 2 and b"bad port 'x'" in result.stderr


def test_client_follow_ends_at_once_on_an_error_reply(servers, tmp_path):
    found = servers(2, "--lastlog-file", str(tmp_path / "no-such.log"))
    for args in (["--port", str(found[0].port)], hosts(found)):
        for request in (["follow", "1"], ["follow", "0"]):
            # A hang (until the server's 300 s idle timeout) fails as TimeoutExpired.
            result = run_greencmd("client", *args, *request, timeout=20)
            assert result.returncode == 1, result.stderr
            assert b"An error occured: " in result.stdout


def test_json_with_one_host_prints_the_fleets_object(servers):
    (server,) = servers(1)
    result = run_greencmd("client", "--port", str(server.port), "--json", "help")
    assert result.returncode == 0
    record = json.loads(result.stdout)
    assert record["port"] == server.port and record["exit"] == 0
    assert record["reply"] == HELP.decode() and record["error"] is None
    assert result.stderr == b"1 server: 1 ok, 0 error replies, 0 unreachable\n"
    unix = run_greencmd("client", "--unix", "/nope", "--json", "help")
    assert unix.returncode == 2 and b"--json" in unix.stderr


def test_a_hosts_file_line_may_end_in_a_comment(servers, tmp_path):
    found = servers(2)
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# the web tier\n127.0.0.1:%d  # web1\n127.0.0.1:%d\t# web2\n"
                          % (found[0].port, found[1].port))
    result = run_greencmd("client", "--hosts-file", str(hosts_file), "help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"2 servers: 2 ok, 0 error replies, 0 unreachable\n"


def test_gather_prints_each_distinct_reply_once_under_its_hosts(servers, tmp_path):
    found = servers(3)
    (tmp_path / "s2" / "app.log").write_bytes(b"another line\n")  # one server differs
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    result = run_greencmd("client", *hosts(found), "--host", "127.0.0.1:%d" % dead,
                          "--gather", "lastlog", "1")
    assert result.returncode == 3
    out = result.stdout.decode()
    blocks = out.split("---------------\n")
    first_two = sorted(str(s.port) for s in found[:2])
    assert out.count("Begin lastlog\nold line\nEnd lastlog\n") == 1
    assert out.count("Begin lastlog\nanother line\nEnd lastlog\n") == 1
    headers = [block.splitlines()[0] for block in blocks if block.startswith("127.")]
    assert headers[0].endswith("(2)") and all(port in headers[0] or "[" in headers[0]
                                              for port in first_two)
    assert headers[-1] == "127.0.0.1:%d (1)" % dead  # the unreachable one comes last
    assert out.rstrip().endswith("error: connection refused")
    assert result.stderr == b"4 servers: 3 ok, 0 error replies, 1 unreachable\n"


@pytest.mark.parametrize("names, folded", [
    (["web1", "web2", "web3", "web7", "db"], "db,web[1-3,7]"),
    (["10.0.0.5:9901", "10.0.0.5:9902", "10.0.0.5:9904"], "10.0.0.5:[9901-9902,9904]"),
    (["n01", "n02", "n10"], "n[01-02,10]"),
    (["web1", "web12", "web10", "web11"], "web[1,10-12]"),
    (["a"], "a"),
])
def test_gather_folds_host_names_into_ranges(names, folded):
    from greencmd.client.gather import fold
    assert fold(names) == folded


def test_gather_and_json_do_not_go_together():
    result = run_greencmd("client", "--gather", "--json", "help")
    assert result.returncode == 2 and b"choose one" in result.stderr


def test_progress_shows_on_a_terminal_and_is_cleared_before_the_summary(servers):
    import os
    import pty

    (server,) = servers(1)
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(21)]  # never answer
    args = ["--host", "127.0.0.1:%d" % server.port]
    for sock in silent:
        args += ["--host", "127.0.0.1:%d" % sock.getsockname()[1]]
    main, side = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "greencmd", "client", *args,
                                 "--timeout", "1.5", "help"], stdout=subprocess.PIPE,
                                stderr=side, env=greencmd_env())
        os.close(side)
        out, _ = proc.communicate(timeout=30)
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        for sock in silent:
            sock.close()
    assert proc.returncode == 3
    assert b"answered 1 of 22, 0 with errors; waiting longest for 127.0.0.1:" in seen
    assert seen.rstrip().endswith(b"22 servers: 1 ok, 0 error replies, 21 unreachable")
    assert b"\r\x1b[K22 servers" in seen  # the line is cleared before the summary
    assert b"answered" not in out  # never on stdout


def test_no_progress_when_stderr_is_not_a_terminal(servers):
    (server,) = servers(1)
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(21)]
    args = ["--host", "127.0.0.1:%d" % server.port]
    for sock in silent:
        args += ["--host", "127.0.0.1:%d" % sock.getsockname()[1]]
    try:
        result = run_greencmd("client", *args, "--timeout", "1", "help")
    finally:
        for sock in silent:
            sock.close()
    assert result.stderr == b"22 servers: 1 ok, 0 error replies, 21 unreachable\n"
