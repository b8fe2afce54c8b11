"""auth TOKEN, protected mode, and the guard against other protocols on the port."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest
from conftest import HELP, NOT_FOUND, greencmd_env, read_until, run_greencmd, wait_until

#: help on a server with a token lists auth too.
AUTH_HELP = HELP.replace(b"quit\n", b"quit, auth TOKEN\n")

TOKEN = b"s3cret-token-0123456789abcdef"
AUTHENTICATED = b"Authenticated.\n"
FAILED = b"Authentication failed.\n"
REQUIRED = b"Authentication required.\n"


def token_file(tmp_path, content: bytes = TOKEN + b"\n", mode: int = 0o600):
    path = tmp_path / "token"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


@pytest.fixture
def guarded(start_server, tmp_path):
    return start_server("--auth-token-file", str(token_file(tmp_path)))


def test_the_right_token_first_then_the_session_goes_on(guarded):
    assert guarded.talk(b"\n  \nauth " + TOKEN + b"\nhelp\n") == AUTHENTICATED + AUTH_HELP


def test_a_token_line_with_crlf_and_spaces_in_the_file(start_server, tmp_path):
    server = start_server("--auth-token-file",
                          str(token_file(tmp_path, b"  " + TOKEN + b"  \r\nsecond line\n")))
    assert server.talk(b"auth " + TOKEN + b"\r\nhelp\r\n") == AUTHENTICATED + AUTH_HELP


@pytest.mark.parametrize("request_line", [
    b"auth wrong", b"auth", b"auth " + TOKEN + b"x", b"auth " + TOKEN[:-1],
    b"AUTH " + TOKEN.upper(),
])
def test_a_wrong_token_closes(guarded, request_line):
    assert guarded.talk(request_line + b"\nhelp\n") == FAILED
    guarded.wait_for_log(lambda line: "Reason: Authentication failed." in line)


def test_any_other_request_first_is_refused(guarded):
    assert guarded.talk(b"help\nauth " + TOKEN + b"\n") == REQUIRED
    guarded.wait_for_log(lambda line: "Reason: Authentication required." in line)


def test_exit_first_just_closes(guarded):
    assert guarded.talk(b"exit\n") == b""


def test_a_thousand_wrong_tokens_get_one_answer(guarded):
    assert guarded.talk(b"auth nope\n" * 1000) == FAILED


def test_a_ten_megabyte_token_is_a_line_too_long(guarded):
    with guarded.connect() as sock:
        sender = threading.Thread(target=send_ignoring_errors,
                                  args=(sock, b"auth " + b"x" * (10 << 20) + b"\n"))
        sender.start()
        assert read_until(sock, b"\n") == b"Line too long.\n"
        sender.join()


def send_ignoring_errors(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server hung up after its "Line too long." and some lingering


def test_a_wrong_auth_later_in_the_session_closes_it(guarded):
    assert guarded.talk(b"auth " + TOKEN + b"\nauth bad\nhelp\n") == AUTHENTICATED + FAILED


def test_the_log_never_shows_the_token(guarded):
    guarded.talk(b"auth " + TOKEN + b"\nauth " + TOKEN + b"\n")
    guarded.talk(b"auth wrong-guess-1234567890\n")
    guarded.wait_for_count("Cmd received from 127.0.0.1 : auth ********", 3)
    assert guarded.count_log(TOKEN.decode()) == 0
    assert guarded.count_log("wrong-guess") == 0


def test_a_server_without_a_token_says_so(server):
    assert server.talk(b"auth something\nhelp\n") == (
        b"An error occured: this server does not use authentication\n" + HELP)


def test_too_many_is_refused_before_authentication(start_server, tmp_path):
    server = start_server("--auth-token-file", str(token_file(tmp_path)), "--max-clients", "1")
    with server.connect() as held:
        held.sendall(b"auth " + TOKEN + b"\n")
        assert read_until(held, b"\n") == AUTHENTICATED
        assert server.talk(b"auth " + TOKEN + b"\n") == b"Too many connections, bye!\n"


def test_the_client_sends_the_token_first(guarded, tmp_path):
    path = token_file(tmp_path)
    result = run_greencmd("client", "--port", str(guarded.port), "--token-file", str(path),
                          "help")
    assert (result.returncode, result.stdout) == (0, AUTH_HELP)
    result = run_greencmd("client", "--port", str(guarded.port), "lastlog", "1",
                          env=greencmd_env(GREENCMD_TOKEN=TOKEN.decode()))
    assert result.returncode == 0 and result.stdout.startswith(b"Begin lastlog\n")


def test_the_client_with_a_refused_token_exits_1(guarded):
    result = run_greencmd("client", "--port", str(guarded.port), "help",
                          env=greencmd_env(GREENCMD_TOKEN="not-the-token-at-all"))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b"greencmd: 127.0.0.1:%d: Authentication failed.\n" % guarded.port


@pytest.mark.parametrize("content, mode, words", [
    (TOKEN + b"\n", 0o644, [b"can be read or written by others (mode 644)", b"chmod 600"]),
    (TOKEN + b"\n", 0o620, [b"chmod 600"]),
    (b"short\n", 0o600, [b"shorter than 16 characters"]),
    (b"\n" + TOKEN, 0o600, [b"shorter than 16 characters"]),
    (b"   \n", 0o600, [b"shorter than 16 characters"]),
])
def test_a_bad_token_file_refuses_to_start(tmp_path, content, mode, words):
    path = token_file(tmp_path, content, mode)
    result = run_greencmd("serve", "--port", "0", "--log-file", "", "--auth-token-file",
                          str(path))
    assert result.returncode == 2
    for word in words:
        assert word in result.stderr
    assert bytes(path) in result.stderr and b"Traceback" not in result.stderr


def test_a_missing_token_file_refuses_to_start(tmp_path):
    result = run_greencmd("serve", "--port", "0", "--auth-token-file", str(tmp_path / "none"))
    assert result.returncode == 2
    assert b"cannot read the token file %s: No such file or directory" % bytes(
        tmp_path / "none") in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_a_public_host_without_a_token_refuses_to_start(host):
    result = run_greencmd("serve", "--host", host, "--port", "0", "--log-file", "")
    assert result.returncode == 2
    assert (b"refusing to serve %s without --auth-token-file (pass --no-auth to serve anyone "
            b"who can connect)" % host.encode()) in result.stderr


def test_no_auth_serves_a_public_host(start_server):
    server = start_server("--host", "0.0.0.0", "--no-auth")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP


def test_a_public_host_with_a_token_warns_about_clear_text(start_server, tmp_path):
    server = start_server("--host", "0.0.0.0", "--auth-token-file", str(token_file(tmp_path)))
    server.wait_for_log(lambda line: "the token crosses the network in clear text" in line)


# -- other protocols on the port ---------------------------------------------------

def test_an_http_post_ends_the_session_before_its_body_runs(server, tmp_path):
    body = b"comhash /etc/hostname\nlastlog\n"
    request = (b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:9999\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    assert server.talk(request) == b""
    server.wait_for_log(lambda line: "Reason: Suspected HTTP on the command port" in line)
    assert server.count_log("Cmd received") == 0


def test_a_host_header_in_the_middle_of_a_session_ends_it(server):
    assert server.talk(b"help\nHost: evil.example\nhelp\n") == HELP


@pytest.mark.parametrize("line", [b"GET / HTTP/1.0", b"OPTIONS * HTTP/1.1",
                                  b"PROPFIND /dav HTTP/1.1", b"host:x"])
def test_http_request_lines_of_any_method(server, line):
    assert server.talk(line + b"\r\n\r\n") == b""


def test_a_tls_client_hello_on_the_plain_port_is_dropped(server):
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\n"
    assert server.talk(hello) == b""
    server.wait_for_log(lambda line: "Reason: Suspected TLS on the command port" in line)


@pytest.mark.parametrize("line", [b"comhash /srv/HTTP/1.1", b"HTTP/1.1", b"hosted",
                                  b"get / http/1.1x"])
def test_lookalikes_are_ordinary_requests(server, line):
    reply = server.talk(line + b"\n")
    assert reply and not reply.startswith(b"Authentication")
    if not line.startswith(b"comhash"):
        assert reply == NOT_FOUND


def test_a_session_that_spoke_http_is_not_counted_as_a_command(server):
    server.talk(b"GET / HTTP/1.1\r\n")
    stats = server.talk(b"stats\n")
    assert b"\ncommands_served 0\n" in stats


def test_the_audit_log_records_who_asked_what_and_never_a_token(start_server, tmp_path):
    path = token_file(tmp_path)
    audit = tmp_path / "audit.jsonl"
    server = start_server("--auth-token-file", str(path), "--audit-log", str(audit))
    assert server.talk(b"auth " + TOKEN + b"\nhelp\nnope\ncomhash /no/such\n").startswith(
        AUTHENTICATED)
    assert server.talk(b"auth wrong-token-of-some-length\n") == b"Authentication failed.\n"
    wait_until(lambda: audit.exists() and audit.read_text().count("\n") == 5, 10, "5 lines")
    assert audit.stat().st_mode & 0o777 == 0o600
    text = audit.read_text()
    assert TOKEN.decode() not in text and "wrong-token" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(e["command"], e["reply"]) for e in lines] == [
        ("auth", "ok"), ("help", "ok"), ("nope", "error"), ("comhash", "error"),
        ("auth", "refused")]
    assert "arg_bytes" not in lines[0] and "arg_bytes" not in lines[4]
    assert lines[3]["arg_bytes"] == len(b"/no/such") and lines[1]["arg_bytes"] == 0
    assert all(e["peer"] == "127.0.0.1" and e["seconds"] >= 0 for e in lines)
    assert [e["session"] for e in lines] == [0, 0, 0, 0, 1]


def test_sighup_reopens_the_audit_log_or_says_why_it_cannot(start_server, tmp_path):
    # The audit log was opened once: after logrotate moved it, every request went on
    # into the moved file, for ever.
    audit = tmp_path / "audit.jsonl"
    moved = tmp_path / "audit.jsonl.1"
    server = start_server("--audit-log", str(audit))
    assert server.talk(b"help\n") == HELP
    wait_until(lambda: audit.exists() and audit.read_text().count("\n") == 1, 10, "1 line")
    audit.rename(moved)
    audit.mkdir()  # a directory in its place: the reopen cannot work
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(lambda line: "Cannot reopen the audit log %s: is a directory; "
                        "it goes on writing where it did" % audit in line)
    assert server.talk(b"nope\n") == NOT_FOUND
    wait_until(lambda: moved.read_text().count("\n") == 2, 10, "2 lines in the moved file")
    audit.rmdir()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(lambda line: "Log file reopened." in line)
    assert server.talk(b"stats\n").startswith(b"Begin stats")
    wait_until(lambda: audit.exists() and audit.read_text().count("\n") == 1, 10,
               "a line in the new file")
    assert json.loads(audit.read_text())["command"] == "stats"
    assert audit.stat().st_mode & 0o777 == 0o600
    assert moved.read_text().count("\n") == 2


def test_a_full_disk_under_the_audit_log_is_one_log_line_not_failed_sessions(start_server):
    server = start_server("--audit-log", "/dev/full")
    for _ in range(3):
        assert server.talk(b"help\nhelp\n") == HELP * 2
    server.wait_for_count("Lost client connection", 3)  # log lines come within 50 ms
    assert server.count_log("requests are not being recorded") == 1


def test_failed_auth_is_logged_once_a_second_per_address_then_counted(guarded):
    for _ in range(6):
        assert guarded.talk(b"auth nope\n") == b"Authentication failed.\n"
    assert guarded.count_log("Reason: Authentication failed.") <= 2  # once a second at most
    time.sleep(1.1)
    guarded.talk(b"auth nope\n")
    guarded.wait_for_log(lambda line: "more failed from 127.0.0.1" in line)


def test_sighup_reads_a_new_token_for_new_sessions(start_server, tmp_path):
    path = token_file(tmp_path)
    server = start_server("--auth-token-file", str(path))
    new = b"n3w-token-fedcba9876543210"
    with server.connect() as kept:
        kept.sendall(b"auth " + TOKEN + b"\n")
        assert read_until(kept, b"\n") == AUTHENTICATED
        path.write_bytes(new + b"\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(lambda line: "Auth token reloaded from %s" % path in line)
        assert server.talk(b"auth " + TOKEN + b"\nhelp\n") == FAILED
        assert server.talk(b"auth " + new + b"\nhelp\n") == AUTHENTICATED + AUTH_HELP
        # A token file gone wrong: one line, never the token, and the last good one holds.
        path.write_bytes(b"x7q\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(lambda line: "Cannot reload the auth token: the token in %s is "
                            "shorter than 16 characters" % path in line)
        assert server.talk(b"auth " + new + b"\nhelp\n") == AUTHENTICATED + AUTH_HELP
        # A session authenticated before goes on.
        kept.sendall(b"help\n")
        assert read_until(kept, b"\n") == AUTH_HELP
    assert server.stop() == 0
    assert not [line for line in server.lines if new.decode() in line or "x7q" in line]


def test_sighup_without_a_token_file_reads_none(start_server):
    server = start_server()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(lambda line: "Log file reopened." in line)
    assert server.talk(b"help\n") == HELP
    assert server.stop() == 0
    assert not [line for line in server.lines if "auth token" in line.lower()]
