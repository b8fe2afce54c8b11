"""Commands from the config file: real programs, no shell, no options from the client."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from conftest import read_until, reset, wait_until

from greencmd.core.programs import AT_ONCE

#: A sleep with an argument no other process has, so the test can look for it.
MARK = "1234.567"


def config_text(tmp_path) -> str:
    return """
[commands.Hello]
run = ["echo", "hello world"]

[commands.record]
run = ["sh", "-c", "echo \\"$@\\" >> %(dir)s/ran.txt; echo recorded \\"$@\\"", "record"]
args = "append"
help = "record WORDS"

[commands.fail]
run = ["sh", "-c", "echo out; echo first >&2; echo 'last words' >&2; exit 3"]

[commands.quietfail]
run = ["sh", "-c", "echo only stdout; exit 4"]

[commands.killed]
run = ["sh", "-c", "kill -9 $$"]

[commands.nonl]
run = ["printf", "no newline"]

[commands.missing]
run = ["%(dir)s/no-such-program"]

[commands.flood]
run = ["head", "-c", "10000000", "/dev/zero"]

[commands.forever]
run = ["sleep", "%(mark)s"]

[commands.grandchild]
run = ["sh", "-c", "sleep %(mark)s & echo started"]

[commands.yes]
run = ["yes"]
""" % {"dir": tmp_path, "mark": MARK}


@pytest.fixture
def programs(start_server, tmp_path):
    path = tmp_path / "commands.toml"
    path.write_text(config_text(tmp_path))

    def start(*args: str):
        return start_server("--config", str(path), *args)

    yield start
    wait_until(lambda: not marked_processes(), message="no program left running")


def marked_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-f", "sleep " + MARK], capture_output=True, text=True)
    return found.stdout.split()


def test_help_lists_configured_commands_after_the_built_ins(programs):
    server = programs()
    assert server.talk(b"help\n") == (
        b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, quit, Hello, "
        b"record WORDS, fail, quietfail, killed, nonl, missing, flood, forever, grandchild, "
        b"yes\n")


def test_output_is_framed_with_the_name_as_written_in_any_case(programs):
    server = programs()
    reply = b"Begin Hello\nhello world\nEnd Hello\n"
    assert server.talk(b"hello\nHELLO\n") == reply + reply


def test_a_last_line_without_newline_gets_one(programs):
    assert programs().talk(b"nonl\n") == b"Begin nonl\nno newline\nEnd nonl\n"


def test_args_none_refuses_an_argument(programs):
    assert programs().talk(b"hello there\n") == (
        b"An error occured: Hello takes no arguments\n")


def test_args_append_adds_each_word(programs, tmp_path):
    server = programs()
    assert server.talk(b"record a  b\tc\n") == b"Begin record\nrecorded a b c\nEnd record\n"
    assert (tmp_path / "ran.txt").read_bytes() == b"a b c\n"


@pytest.mark.parametrize("words", [b"-rf", b"--help", b"ok -x", b"-"])
def test_words_starting_with_a_dash_are_refused_before_anything_runs(programs, tmp_path,
                                                                     words):
    server = programs()
    assert server.talk(b"record " + words + b"\n") == (
        b"An error occured: record: arguments may not start with '-'\n")
    assert not (tmp_path / "ran.txt").exists()


@pytest.mark.parametrize("words", [b"a\0b", b"\0", b"ok x\0"])
def test_a_nul_byte_in_an_argument_is_refused_before_anything_runs(programs, tmp_path,
                                                                   words):
    # Found by a soak: no program can be given a NUL byte, and the spawn's ValueError
    # came out as "internal error" and "failed unexpectedly" in the log.
    server = programs()
    assert server.talk(b"record " + words + b"\nrecord fine\n") == (
        b"An error occured: record: arguments may not contain a NUL byte\n"
        b"Begin record\nrecorded fine\nEnd record\n")
    assert (tmp_path / "ran.txt").read_bytes() == b"fine\n"
    assert server.count_log("failed unexpectedly") == 0


def test_shell_syntax_is_passed_as_plain_words(programs, tmp_path):
    server = programs()
    assert server.talk(b"record $(id) ;rm *\n") == (
        b"Begin record\nrecorded $(id) ;rm *\nEnd record\n")


def test_a_failing_program_gives_its_status_and_last_stderr_line(programs):
    server = programs()
    assert server.talk(b"fail\nquietfail\nkilled\n") == (
        b"An error occured: fail exited with status 3: last words\n"
        b"An error occured: quietfail exited with status 4: only stdout\n"
        b"An error occured: killed was killed by signal 9\n")


def test_a_missing_program_cannot_run(programs, tmp_path):
    assert programs().talk(b"missing\n") == (
        b"An error occured: cannot run missing: [Errno 2] No such file or directory: "
        b"'%s/no-such-program'\n" % bytes(tmp_path))


def test_ten_megabytes_of_output_are_refused(programs):
    server = programs()
    assert server.talk(b"flood\nhello\n") == (
        b"An error occured: flood printed over 4 MiB; stopped\n"
        b"Begin Hello\nhello world\nEnd Hello\n")
    wait_until(lambda: not server.children(), message="flood reaped")


def test_a_program_that_never_ends_is_killed_at_the_command_timeout(programs):
    server = programs("--command-timeout", "1")
    started = time.monotonic()
    assert server.talk(b"forever\n") == (
        b"An error occured: forever did not finish within 1 second; stopped\n")
    assert time.monotonic() - started < 5
    wait_until(lambda: not marked_processes(), message="sleep killed")


def test_a_grandchild_holding_the_pipe_does_not_hold_the_reply(programs):
    server = programs("--command-timeout", "20")
    started = time.monotonic()
    assert server.talk(b"grandchild\n") == b"Begin grandchild\nstarted\nEnd grandchild\n"
    assert time.monotonic() - started < 5
    wait_until(lambda: not marked_processes(), message="the grandchild killed")


def test_a_reset_kills_the_program_and_all_it_started(programs):
    server = programs()
    sock = server.connect()
    sock.sendall(b"forever\n")
    wait_until(lambda: marked_processes(), message="sleep started")
    reset(sock)
    wait_until(lambda: not marked_processes(), message="sleep killed")
    wait_until(lambda: not server.children(), message="reaped")


def test_a_program_stopped_with_output_unread_leaves_no_descriptor_open(programs):
    # asyncio closes a child's pipes only once they are read to their end: a reply
    # cut at 4 MiB, or a reset that cancelled the reading, left them open (and the
    # child's transport, and what it had buffered) until the garbage collector found
    # them, if ever before the loop closed: 85 descriptors after a 10-second soak.
    # Before Python 3.12, Process.wait() also waits for that end: such a reply could
    # take the whole --command-timeout instead.
    server = programs("--max-clients", "20")
    assert server.talk(b"help\n").startswith(b"Commands:")
    before = server.fd_count()
    replies: list[bytes] = []

    def floods() -> None:  # at once, so the server reads slower than they write
        for _ in range(6):
            replies.append(server.talk(b"flood\n"))
            sock = server.connect()
            sock.sendall(b"yes\n")
            time.sleep(0.05)
            reset(sock)

    threads = [threading.Thread(target=floods) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert replies == [b"An error occured: flood printed over 4 MiB; stopped\n"] * 48
    wait_until(lambda: not server.children(), message="children killed and reaped")
    wait_until(lambda: server.fd_count() <= before, 5, "descriptors closed")


def test_stats_count_configured_commands_by_lower_case_name(programs):
    server = programs()
    server.talk(b"hello\nHello\nrecord x\n")
    stats = server.talk(b"stats\n")
    assert b"\ncommand_hello 2\n" in stats
    assert b"\ncommand_record 1\n" in stats


def test_the_program_gets_no_stdin_and_its_own_process_group(programs, tmp_path):
    path = tmp_path / "more.toml"
    path.write_text('[commands.who]\nrun = ["sh", "-c", "cat; echo $$ $(ps -o pgid= -p $$)"]\n')
    server = programs("--config", str(path))
    with server.connect() as sock:
        sock.sendall(b"who\n")
        reply = read_until(sock, b"End who\n")
    pid, group = map(int, reply.split(b"\n")[1].split())
    assert group == pid != os.getpgid(server.proc.pid)


def test_at_most_at_once_programs_run_at_the_same_time(start_server, tmp_path):
    # Every engine bounds the children it runs to their end; the others wait their turn.
    path = tmp_path / "nap.toml"
    path.write_text('[commands.nap]\nrun = ["sh", "-c", "sleep 0.6; echo rested"]\n')
    server = start_server("--config", str(path), "--max-clients", str(4 * AT_ONCE))
    socks = [server.connect(timeout=60) for _ in range(2 * AT_ONCE + 1)]
    for sock in socks:
        sock.sendall(b"nap\n")
    most, seen = 0, []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (seen and seen[-1] == 0 and most):
        seen.append(len(server.children()))
        most = max(most, seen[-1])
        time.sleep(0.02)
    for sock in socks:
        assert read_until(sock, b"End nap\n") == b"Begin nap\nrested\nEnd nap\n"
        sock.close()
    assert most == AT_ONCE, seen
