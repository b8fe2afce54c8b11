"""The server log: Twisted's format, escaping, files, SIGHUP, --quiet."""

import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys

import pytest
from conftest import (
    HELP,
    Server,
    greencmd_env,
    read_all,
    read_until,
    reset,
    run_greencmd,
    wait_until,
)

from greencmd.core import logs

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] \S.*$")


def test_every_line_has_twisteds_format(server, engine):
    assert server.talk(b"hello server\n") == b"Command not found.\n"
    server.wait_for_log(lambda line: "Lost client connection" in line)
    assert all(LINE.match(line) for line in server.lines), server.lines
    systems = [re.search(r"\[([^\]]+)\] (.*)", line).groups() for line in server.lines]
    assert systems[0] == ("-", "Log opened.")
    starting = {"gevent": "greencmd.server.CommandServer",
                "twisted": "greencmd.twisted_engine.server.CommandFactory",
                "asyncio": "greencmd.asyncio_engine.server.CommandServer"}[engine]
    assert systems[1][0] == "-" and systems[1][1].startswith(
        starting + " starting on 127.0.0.1:")
    assert ("CommandServer", "Client connection from 127.0.0.1") in systems
    assert ("CmdSession,0,127.0.0.1", "Cmd received from 127.0.0.1 : hello server") in systems
    assert ("CmdSession,0,127.0.0.1",
            "Lost client connection. Reason: Connection was closed cleanly.") in systems


def test_control_bytes_and_bad_utf8_are_escaped_in_the_log(server):
    server.talk(b"he\x1b[2Jllo \xff\xfe \x07\x00 caf\xc3\xa9\n")
    line = server.wait_for_log(lambda line: "Cmd received" in line and line)
    assert line.endswith(r"he\x1b[2Jllo \xff\xfe \x07\x00 café")


def test_log_file_gets_the_same_lines_and_is_appended(start_server, tmp_path):
    path = tmp_path / "logs" / "deep" / "server.log"
    path.parent.mkdir(parents=True)
    path.write_text("earlier line\n")
    server = start_server("--log-file", str(path))
    server.talk(b"help\n")
    server.wait_for_log(lambda line: "Lost client connection" in line)
    assert server.stop() == 0
    text = path.read_text().splitlines()
    assert text[0] == "earlier line"
    assert text[1:] == server.lines


def test_default_log_file_is_under_xdg_state_home(tmp_path):
    # Not start_server: it always names a --log-file, and this test is about none.
    server = Server(["--port", "0", "--lastlog-file", "x"], tmp_path,
                    greencmd_env(XDG_STATE_HOME=str(tmp_path / "state")))
    try:
        log = tmp_path / "state" / "greencmd" / "server.log"
        wait_until(lambda: log.exists() and "starting on" in log.read_text(), 10,
                   "log file written")
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value", ["", "''", '""'])
def test_empty_greencmd_log_file_turns_the_log_file_off(tmp_path, value):
    state = tmp_path / "state"
    server = Server(["--port", "0", "--lastlog-file", "x"], tmp_path,
                    greencmd_env(XDG_STATE_HOME=str(state), GREENCMD_LOG_FILE=value))
    try:
        assert server.talk(b"help\n") == HELP
    finally:
        assert server.stop() == 0
    # No default log file, and no file named after the quotes either.
    assert not state.exists()
    assert not any(p.name in ("''", '""') for p in tmp_path.iterdir())


def test_sighup_reopens_the_log_file(start_server, tmp_path):
    path = tmp_path / "rot.log"
    server = start_server("--log-file", str(path))
    path.rename(tmp_path / "rot.log.1")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: path.exists() and "Log file reopened." in path.read_text(), 10,
               "log file reopened")
    assert server.talk(b"help\n") == HELP
    wait_until(lambda: "Client connection" in path.read_text(), 10, "new file written")
    assert "Client connection" not in (tmp_path / "rot.log.1").read_text()


def test_a_log_file_that_cannot_be_rotated_or_reopened_costs_lines_not_the_server(
        start_server, tmp_path):
    # Its directory removed and a file put in its place: the gevent server died of the
    # SIGHUP's reopen (a traceback, exit 1), the other engines printed tracebacks, and
    # every engine printed one per flush once rotation failed. Now one line each, and a
    # SIGHUP once the path works again brings the file back.
    directory = tmp_path / "logs"
    path = directory / "server.log"
    server = start_server("--log-file", str(path), "--log-max-size", "2K")
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()
    directory.write_text("not a directory\n")
    for _ in range(30):  # past 2 KiB of log: a rotation is due, and fails
        assert server.talk(b"help\n") == HELP
    server.wait_for_log(lambda line: "Cannot rotate the log file %s: " % path in line)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(lambda line: "Cannot reopen the log file %s: " % path in line
                        and line.endswith("; it goes on writing where it did"))
    assert server.talk(b"help\n") == HELP
    assert server.count_log("Cannot rotate") == 1
    directory.unlink()
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: path.exists() and "Log file reopened." in path.read_text(), 10,
               "log file back")
    assert server.talk(b"help\n") == HELP
    wait_until(lambda: "Client connection" in path.read_text(), 10, "new file written")


def test_quiet_logs_connections_but_not_commands(start_server):
    server = start_server("--quiet")
    server.talk(b"help\nnope\n")
    server.wait_for_log(lambda line: "Lost client connection" in line)
    assert server.count_log("Client connection from") == 1
    assert server.count_log("Cmd received") == 0


def log_files(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name))


def test_log_file_rotates_by_size_keeping_the_newest_files(start_server, tmp_path):
    log = tmp_path / "rot.log"
    server = start_server("--log-file", str(log), "--log-max-size", "2K", "--log-keep", "2")
    requests = b"".join(b"request %03d\n" % i for i in range(120))  # ~10 KB of log lines
    server.talk(requests)
    assert server.stop() == 0
    assert log_files(tmp_path, "rot.log") == ["rot.log", "rot.log.1", "rot.log.2"]
    for name in log_files(tmp_path, "rot.log"):
        assert (tmp_path / name).stat().st_size <= 2048
    # .2 older than .1 older than the file itself; together they end the log.
    text = b"".join((tmp_path / name).read_bytes()
                    for name in ("rot.log.2", "rot.log.1", "rot.log"))
    numbers = [int(n) for n in re.findall(rb"request (\d{3})", text)]
    assert numbers == sorted(numbers) and numbers[-1] == 119
    assert text.endswith(b"Main loop terminated.\n")


def test_rotation_counts_bytes_not_characters(start_server, tmp_path):
    log = tmp_path / "utf8.log"
    server = start_server("--log-file", str(log), "--log-max-size", "2K", "--log-keep", "3")
    server.talk("".join("réquête %03d €\n" % i for i in range(60)).encode())
    assert server.stop() == 0
    text = b""
    for name in ("utf8.log.3", "utf8.log.2", "utf8.log.1", "utf8.log"):
        data = (tmp_path / name).read_bytes()
        assert len(data) <= 2048 and data.endswith(b"\n")
        text += data
    numbers = [int(n) for n in re.findall(r"réquête (\d{3}) €", text.decode())]
    assert numbers[-1] == 59 and numbers == sorted(numbers)


@pytest.mark.parametrize("char", ["a", "é", "😀", "\udcff"])
def test_log_writes_are_whole_lines_of_at_most_pipe_buf_bytes(char):
    lengths = [0, 1, 70, 700, 4095, 4096, 9000, 3, 2000, 2000, 2000]
    text = "".join(char * n + "\n" for n in lengths)
    written = list(logs.pieces(text, logs.PIPE_BUF))
    assert "".join(written) == text
    for piece in written:
        assert piece.endswith("\n")
        if logs.line_bytes(piece) > logs.PIPE_BUF:  # only a line that long alone
            assert piece.count("\n") == 1 and len(piece) > logs.PIPE_BUF // 6
    assert len(written) < len(lengths)  # short lines do share a write


@pytest.mark.parametrize("json_lines", [False, True])
def test_someone_elses_handler_gets_a_record_per_line_and_ours_the_line(json_lines):
    """An application embedding greencmd may add its own handler to the logger."""
    stdout = io.StringIO()
    logs.setup_logging(None, stream=stdout)
    logs.use_json_lines(json_lines)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(logs.LOGGER_NAME).addHandler(handler)
    try:
        logs.log_connection("192.0.2.7")
        logs.log_lost(logs.CLEAN, logs.session_name(3, "192.0.2.7"))
        logs.flush_logs()
    finally:
        logs.use_json_lines(False)
        logs.setup_logging(None, stream=io.StringIO())
    assert [(r.system, r.getMessage()) for r in records] == [
        ("CommandServer", "Client connection from 192.0.2.7"),
        ("CmdSession,3,192.0.2.7",
         "Lost client connection. Reason: Connection was closed cleanly.")]
    assert records[0].created <= records[1].created
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 2  # once each: our own handler is not given the records too
    if json_lines:
        assert [json.loads(line)["event"] for line in lines] == ["connect", "session_end"]
    else:
        assert all(LINE.match(line) for line in lines)
        assert lines[1].endswith("[CmdSession,3,192.0.2.7] Lost client connection. Reason: "
                                 "Connection was closed cleanly.")


def test_log_max_size_0_never_rotates(start_server, tmp_path):
    log = tmp_path / "one.log"
    server = start_server("--log-file", str(log), "--log-max-size", "0")
    server.talk(b"".join(b"request %03d\n" % i for i in range(120)))
    assert server.stop() == 0
    assert log_files(tmp_path, "one.log") == ["one.log"]
    assert log.stat().st_size > 4096


@pytest.mark.parametrize("size", ["10X", "-1", "1.5M", "M", ""])
def test_bad_log_max_size_is_one_sentence_exit_2(size):
    result = run_greencmd("serve", "--port", "0", "--log-file", "", "--log-max-size", size)
    assert result.returncode == 2 and b"is not a size" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_closed_stdout_does_not_stop_the_server(tmp_path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "greencmd", "serve", "--port", "0",
                             "--log-file", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=greencmd_env())
    try:
        wait_until(lambda: log.exists() and "starting on" in log.read_text(),
                   message="started")
        port = int(re.search(r"starting on \S+:(\d+)", log.read_text()).group(1))
        proc.stdout.close()  # whoever read the log went away: writes now fail with EPIPE
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"help\n")
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock) == HELP
        wait_until(lambda: log.read_text().count("Cmd received") == 3, message="logged")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert b"Traceback" not in proc.stderr.read()


def test_start_up_says_how_it_is_protected_and_what_it_serves(start_server, tmp_path):
    server = start_server("--lastlog-file", str(tmp_path / "not-yet.log"))
    server.wait_for_log(lambda line: line.endswith("[-] TLS off; auth off"))
    server.wait_for_log(lambda line: "lastlog source: %s (warning: it does not exist"
                        % (tmp_path / "not-yet.log") in line)
    server.wait_for_log(lambda line: line.endswith(
        "[-] Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, quit"))


def test_start_up_says_auth_is_on(start_server, tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32 + "\n")
    token.chmod(0o600)
    server = start_server("--auth-token-file", str(token))
    server.wait_for_log(lambda line: line.endswith(
        "[-] TLS off; auth on (each session must send auth TOKEN first)"))


def test_json_logs_are_one_object_per_line_for_every_kind_of_event(start_server, tmp_path):
    import json

    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    token.chmod(0o600)
    log_file = tmp_path / "json.log"
    server = start_server("--log-format", "json", "--log-file", str(log_file),
                          "--max-clients", "1", "--max-line", "60", "--idle-timeout", "1",
                          "--auth-token-file", str(token))
    with server.connect() as sock:  # holds the one slot: the next one is refused
        sock.sendall(b"auth " + b"t" * 32 + b"\nhelp\n")
        read_until(sock, b"auth TOKEN\n")
        assert server.talk(b"help\n").startswith(b"Too many")
        sock.sendall(b"x" * 80 + b"\n")  # too long: that session ends
        sock.recv(4096)
    resetting = server.connect()
    resetting.sendall(b"auth " + b"t" * 32 + b"\n")
    server.wait_for_count('"event": "request"', 3)
    reset(resetting)
    server.wait_for_count('"event": "session_end"', 3)
    with server.connect():  # says nothing: idle timeout
        server.wait_for_log(lambda line: "Idle timeout." in line)
    assert server.stop() == 0
    records = [json.loads(line) for line in server.lines]  # every line parses
    assert records == [json.loads(line) for line in log_file.read_text().splitlines()]
    events = {record["event"] for record in records}
    assert {"server", "connect", "request", "session_end"} <= events
    for record in records:
        assert record["level"] in ("info", "warning", "error") and record["time"][:2] == "20"
        if record["system"].startswith("CmdSession,"):
            assert isinstance(record["session"], int) and record["peer"] == "127.0.0.1"
    requests = [r["request"] for r in records if r["event"] == "request"]
    assert "auth ********" in requests and all("t" * 32 not in r for r in requests)
    reasons = {r["reason"] for r in records if r["event"] == "session_end"}
    assert {"Refused: too many connections.", "Line too long.", "Connection was reset by peer.",
            "Idle timeout."} <= reasons
