"""lastlog: real tail, real files, FIFOs that never end, children checked in /proc."""

import os
import socket

import pytest
from conftest import HELP, SAMPLE_LINES, lastlog_of, read_all, read_until, reset, wait_until

from greencmd.core.logtail import TAIL
from greencmd.core.settings import LASTLOG_CANDIDATES

BAD_COUNT = b"An error occured: lastlog takes a line count from 1 to 1000\n"


def test_lastlog_gives_last_ten_lines_without_header_lines(server):
    # tail's last 10 lines hold the "==>" header, which is left out: 9 remain.
    assert server.talk(b"lastlog\n") == lastlog_of(SAMPLE_LINES[-9:])


@pytest.mark.parametrize("count", [1, 4, 5, 1000])
def test_lastlog_n(server, count):
    # Line 16 of the file is the "==>" header: tail counts it, lastlog drops it.
    tail = (SAMPLE_LINES[:15] + [None] + SAMPLE_LINES[15:])[-count:]
    assert server.talk(b"lastlog %d\n" % count) == lastlog_of([x for x in tail if x])


@pytest.mark.parametrize("arg", [b"0", b"1001", b"-3", b"ten", b"2 3", b"9" * 6000])
def test_lastlog_bad_count(server, arg):
    assert server.talk(b"lastlog " + arg + b"\n") == BAD_COUNT


def test_last_line_without_newline_gets_one(start_server, tmp_path):
    source = tmp_path / "nonl.log"
    source.write_bytes(b"first\nsecond \xff\x1b")
    server = start_server("--lastlog-file", str(source))
    assert server.talk(b"lastlog\n") == lastlog_of([b"first", b"second \xff\x1b"])


def test_empty_source_gives_empty_framing(start_server, tmp_path):
    source = tmp_path / "empty.log"
    source.write_bytes(b"")
    server = start_server("--lastlog-file", str(source))
    assert server.talk(b"lastlog\n") == b"Begin lastlog\nEnd lastlog\n"


def test_missing_source_is_named_in_the_error(start_server, tmp_path):
    missing = tmp_path / "gone.log"
    server = start_server("--lastlog-file", str(missing))
    assert server.talk(b"lastlog\n") == (
        b"An error occured: [Errno 2] No such file or directory: '%s'\n" % bytes(missing))


def test_directory_source_is_named_in_the_error(start_server, tmp_path):
    server = start_server("--lastlog-file", str(tmp_path))
    assert server.talk(b"lastlog\n") == (
        b"An error occured: [Errno 21] Is a directory: '%s'\n" % bytes(tmp_path))


def test_huge_output_is_refused_not_buffered(start_server, tmp_path):
    source = tmp_path / "wide.log"
    source.write_bytes((b"w" * 8191 + b"\n") * 1000)
    server = start_server("--lastlog-file", str(source))
    reply = server.talk(b"lastlog 1000\nhelp\n")
    assert reply.startswith(b"An error occured: lastlog of '%s' is over 4 MiB" % bytes(source))
    assert reply.endswith(b"\n" + HELP)
    assert reply.count(b"\n") == 2


def test_tail_failing_on_a_readable_source_is_answered_with_its_own_words(start_server):
    # /proc/self/mem can be opened, but reading its start fails: tail says why on
    # stderr, read after its stdout (lastlog's pipes are read in turn), and exits 1.
    server = start_server("--lastlog-file", "/proc/self/mem")
    assert server.talk(b"lastlog\nhelp\n") == (
        b"An error occured: tail of '/proc/self/mem' failed with status 1: "
        b"%s: error reading '/proc/self/mem': Input/output error\n%s" % (TAIL.encode(), HELP))


def fifo_server(start_server, tmp_path, *options):
    fifo = tmp_path / "never.fifo"
    os.mkfifo(fifo)
    return start_server("--lastlog-file", str(fifo), *options), fifo


def test_fifo_source_hits_the_command_timeout(start_server, tmp_path):
    server, fifo = fifo_server(start_server, tmp_path, "--command-timeout", "1")
    reply = server.talk(b"lastlog\nhelp\n")
    assert reply == (b"An error occured: lastlog of '%s' did not finish within 1 second;"
                     b" stopped\n%s" % (bytes(fifo), HELP))
    wait_until(lambda: not server.children(), 10, "tail killed and reaped")


def test_client_reset_during_lastlog_kills_tail(start_server, tmp_path):
    server, _ = fifo_server(start_server, tmp_path, "--command-timeout", "120")
    sock = server.connect()
    sock.sendall(b"lastlog\n")
    wait_until(lambda: server.children(), 10, "tail started")
    reset(sock)
    wait_until(lambda: not server.children(), 10, "tail killed and reaped")
    server.wait_for_log(lambda line: "Reason: Connection was reset by peer." in line)


def test_client_that_only_half_closed_still_gets_its_reply(start_server, tmp_path):
    server, fifo = fifo_server(start_server, tmp_path, "--command-timeout", "2")
    with server.connect() as sock:
        sock.sendall(b"lastlog\n")
        wait_until(lambda: server.children(), 10, "tail started")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock).startswith(b"An error occured: lastlog of '%s'" % bytes(fifo))
    wait_until(lambda: not server.children(), 10, "tail killed and reaped")


def test_concurrent_lastlogs_leave_no_child(start_server):
    server = start_server("--max-clients", "20")
    socks = [server.connect() for _ in range(20)]
    for sock in socks:
        sock.sendall(b"lastlog 2\nlastlog 3\n")
        sock.shutdown(socket.SHUT_WR)
    for sock in socks:
        assert read_all(sock) == lastlog_of(SAMPLE_LINES[-2:]) + lastlog_of(SAMPLE_LINES[-3:])
        sock.close()
    assert server.children() == []


def first_system_log():
    for path in LASTLOG_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def test_default_source_falls_back_to_the_servers_own_log(start_server, tmp_path):
    own = tmp_path / "state" / "own.log"
    server = start_server("--log-file", str(own), "--lastlog-file", "")
    expected = first_system_log() or str(own)
    server.wait_for_log(lambda line: line.endswith("lastlog source: " + expected))
    reply = server.talk(b"lastlog 1000\n")
    assert reply.startswith(b"Begin lastlog\n") and reply.endswith(b"End lastlog\n")
    if expected == str(own):
        assert b" starting on 127.0.0.1:" in reply


def test_lastlog_of_the_own_log_sees_what_was_just_logged(start_server, tmp_path):
    # The log is flushed every 50 ms, and once more right before tail reads it.
    own = tmp_path / "own.log"
    server = start_server("--log-file", str(own), "--lastlog-file", str(own))
    with server.connect() as sock:
        sock.sendall(b"marker-line-one\nlastlog 3\n")
        reply = read_until(sock, b"End lastlog\n")
    assert reply.startswith(b"Command not found.\nBegin lastlog\n")
    assert b"Cmd received from 127.0.0.1 : marker-line-one\n" in reply
    assert b"Cmd received from 127.0.0.1 : lastlog 3\n" in reply


def test_no_source_at_all_says_how_to_choose_one(start_server):
    if first_system_log():
        pytest.skip("this machine has a system log, so a source always exists")
    server = start_server("--log-file", "", "--lastlog-file", "")
    assert server.talk(b"lastlog\n") == (
        b"An error occured: no log file to tail (tried /var/log/syslog, /var/log/messages);"
        b" start the server with --lastlog-file PATH\n")
