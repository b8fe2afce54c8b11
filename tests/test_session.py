"""Framing, dispatch and bad input, against a real server over real sockets."""

import hashlib

import pytest
from conftest import (
    HELP,
    NOT_FOUND,
    SAMPLE_LINES,
    lastlog_of,
    read_all,
    read_until,
    reset,
    wait_until,
)

from greencmd.core import protocol


def test_help_and_unknown_command(server):
    assert server.talk(b"help\n") == HELP
    assert server.talk(b"hello server\n") == NOT_FOUND


def test_command_word_ignores_case_and_arguments_are_trimmed(server, tmp_path):
    (tmp_path / "a b.txt").write_bytes(b"data")
    digest = hashlib.sha1(b"data").hexdigest().encode()
    reply = server.talk(b"HeLp\nCOMHASH   %s/a b.txt   \n" % str(tmp_path).encode())
    assert reply == HELP + b"File hash is : " + digest + b"\n"


def test_crlf_and_bare_lf_both_end_a_line(server):
    assert server.talk(b"help\r\nhelp\n") == HELP * 2


def test_only_one_cr_is_dropped_the_next_stays_in_the_line(server):
    # The second CR stays in the line (the log shows it); as whitespace it does not
    # change the command word.
    assert server.talk(b"help\r\r\n") == HELP
    server.wait_for_log(lambda line: line.endswith("Cmd received from 127.0.0.1 : help\\x0d"))


def test_blank_lines_get_no_reply(server):
    assert server.talk(b"\n   \n\t\r\n\r\nhelp\n") == HELP


def test_last_line_without_lf_is_answered_at_eof(server):
    assert server.talk(b"help\nhelp") == HELP * 2


def test_exit_and_quit_close_after_owed_replies(server):
    assert server.talk(b"help\nexit\nhelp\n") == HELP
    assert server.talk(b"help\nQUIT now\nhelp\n") == HELP
    assert server.talk(b"exit") == b""


def test_exit_closes_even_while_the_client_keeps_its_side_open(server):
    with server.connect() as sock:
        sock.sendall(b"help\nexit\n")
        assert read_all(sock) == HELP


def test_pipelined_mixed_requests_in_one_write_come_back_in_order(server, tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(range(256)) * 100)
    small_hash = b"File hash is : %s\n" % hashlib.sha1(small.read_bytes()).hexdigest().encode()
    missing = tmp_path / "missing"
    kinds = [
        (b"help", HELP),
        (b"nope", NOT_FOUND),
        (b"comhash " + bytes(small), small_hash),
        (b"lastlog 3", lastlog_of(SAMPLE_LINES[-3:])),
        (b"", b""),
        (b"comhash " + bytes(missing), protocol.error(
            "[Errno 2] No such file or directory: %r" % str(missing))),
        (b"comhash", b"please provide a path.\n"),
        (b"lastlog 0", b"An error occured: lastlog takes a line count from 1 to 1000\n"),
    ]
    requests = [kinds[i % len(kinds)] for i in range(160)]
    data = b"".join(line + b"\n" for line, _ in requests)
    assert server.talk(data) == b"".join(reply for _, reply in requests)


def test_commands_that_wait_one_after_another_on_one_connection(server, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with server.connect() as sock:
        for request in (b"lastlog 1", b"comhash %s" % bytes(tmp_path / "f"), b"lastlog 2",
                        b"help", b"comhash %s" % bytes(tmp_path / "f"), b"lastlog 1"):
            sock.sendall(request + b"\n")
            reply = read_until(sock, b"lastlog\n" if b"lastlog" in request else b"\n")
            assert reply.startswith((b"Begin lastlog\n", b"File hash is : ", b"Commands:"))


def test_replies_to_one_request_at_a_time(server):
    with server.connect() as sock:
        for _ in range(3):
            sock.sendall(b"help\n")
            assert read_until(sock, b"\n") == HELP


def test_invalid_utf8_and_nul_bytes_get_ordinary_replies(server):
    assert server.talk(b"\xff\xfe\xfd\n\x00\x00\nhel\x00p\n") == NOT_FOUND * 3
    assert server.talk(b"help \xff\x00\n") == HELP
    reply = server.talk(b"comhash /tmp/\x00x\n")
    assert reply.startswith(b"An error occured: ") and reply.count(b"\n") == 1
    assert b"NUL" in reply


def test_every_byte_value_as_a_command_word(server):
    data = b"".join(bytes([b]) + b"\n" for b in range(256) if b not in b"\n")
    reply = server.talk(data)
    blanks = sum(1 for b in range(256) if b != 10 and bytes([b]).isspace())
    assert reply == NOT_FOUND * (255 - blanks)
    assert server.talk(b"help\n") == HELP


def test_line_of_max_line_bytes_is_answered(start_server):
    server = start_server("--max-line", "16")
    assert server.talk(b"x" * 16 + b"\n") == NOT_FOUND
    assert server.talk(b"x" * 16 + b"\r\n") == NOT_FOUND


def test_line_over_max_line_is_refused_after_earlier_replies(start_server):
    server = start_server("--max-line", "16")
    assert server.talk(b"help\n" + b"x" * 17 + b"\nhelp\n") == HELP + b"Line too long.\n"
    server.wait_for_log(lambda line: "Reason: Line too long." in line)


def test_default_max_line_is_8192(server):
    assert server.talk(b"x" * 8192 + b"\n") == NOT_FOUND
    assert server.talk(b"x" * 8193 + b"\n") == b"Line too long.\n"


def test_endless_line_is_cut_off_without_buffering_it(server):
    with server.connect() as sock:
        sent = 0
        try:
            # Far more than the limit, never a LF: the server must hang up early.
            while sent < 64 << 20:
                sock.sendall(b"z" * 65536)
                sent += 65536
        except OSError:
            pass
        assert read_until(sock, b"\n") == b"Line too long.\n"
    assert sent < 64 << 20
    assert server.talk(b"help\n") == HELP


def test_reset_by_client_is_logged_and_harmless(server):
    sock = server.connect()
    sock.sendall(b"help\n")
    assert read_until(sock, b"\n") == HELP
    reset(sock)
    server.wait_for_log(lambda line: "Reason: Connection was reset by peer." in line)
    assert server.talk(b"help\n") == HELP


def test_bad_sessions_leave_no_file_descriptor_behind(server, tmp_path):
    assert server.talk(b"help\n") == HELP
    server.wait_for_count("Lost client connection", 1)
    before = server.fd_count()
    abuse = [b"x" * 9000 + b"\n", b"\xff" * 10 + b"\n", b"comhash /nope\n",
             b"comhash " + bytes(tmp_path) + b"\n", b"lastlog\nhelp\n", b"exit\n", b""]
    for i in range(70):
        sock = server.connect()
        sock.sendall(abuse[i % len(abuse)])
        if i % 2:
            reset(sock)
        else:
            sock.close()
    server.wait_for_count("Lost client connection", 71)
    # The log line comes just before the lingering close; a leak never comes back.
    wait_until(lambda: server.fd_count() == before, 10, "fd count back to %d" % before)


@pytest.mark.engines("gevent")
def test_bad_sessions_leave_no_greenlet_behind(server, tmp_path):
    test_bad_sessions_leave_no_file_descriptor_behind(server, tmp_path)
    assert server.stop() == 0
    assert server.count_log("Stopped: every session closed, no command left running.") == 1
    assert server.count_log("still running") == 0
