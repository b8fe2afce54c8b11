"""The command line: option parsing with CliRunner, the client against real servers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import (
    HELP,
    NOT_FOUND,
    SAMPLE_LINES,
    greencmd_env,
    lastlog_of,
    run_greencmd,
    scripted_server,
)

from greencmd.tools.cli import cli


@pytest.mark.parametrize("args", [
    ["serve", "--port", "70000"], ["serve", "--port", "x"], ["serve", "--max-clients", "0"],
    ["serve", "--hash-threads", "0"], ["serve", "--max-line", "0"],
    ["serve", "--idle-timeout", "-1"], ["serve", "--command-timeout", "0"],
    ["serve", "--grace", "-2"], ["serve", "--hash-root", "/no/such/dir"],
    ["serve", "--bogus"], ["client", "--timeout", "0", "help"], ["client", "--port", "-1"],
    ["nosuchcommand"],
])
def test_bad_options_exit_2(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output


def test_bad_option_from_the_environment_exits_2():
    result = CliRunner().invoke(cli, ["serve"], env={"GREENCMD_MAX_CLIENTS": "none"})
    assert result.exit_code == 2
    assert "max-clients" in result.output


def test_serve_help_names_every_option_its_default_and_variable():
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for option in ("host", "port", "max-clients", "lastlog-file", "hash-root", "hash-threads",
                   "max-line", "idle-timeout", "command-timeout", "grace", "log-file", "quiet"):
        assert "--" + option in text
        assert "GREENCMD_" + option.upper().replace("-", "_") in text
    assert "default: 9999" in text and "default: 8192" in text


def test_client_help_names_host_and_port_variables():
    text = CliRunner().invoke(cli, ["client", "--help"], terminal_width=200).output
    assert "GREENCMD_HOST" in text and "GREENCMD_PORT" in text and "--timeout" in text


def client(server, *args, stdin=None, env=None):
    return run_greencmd("client", "--port", str(server.port), *args, input=stdin,
                        env=env or greencmd_env())


def test_client_one_shot_prints_the_reply(server):
    result = client(server, "lastlog", "3")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, lastlog_of(SAMPLE_LINES[-3:]), b"")


def test_client_words_are_joined_into_one_line(server, tmp_path):
    (tmp_path / "a b").write_bytes(b"x")
    result = client(server, "comhash", str(tmp_path / "a b"))
    assert result.returncode == 0 and result.stdout.startswith(b"File hash is : ")


@pytest.mark.parametrize("words, reply", [
    (["nope"], NOT_FOUND), (["comhash"], b"please provide a path.\n"),
    (["comhash", "/no/such"],
     b"An error occured: [Errno 2] No such file or directory: '/no/such'\n"),
])
def test_client_error_replies_exit_1(server, words, reply):
    result = client(server, *words)
    assert (result.returncode, result.stdout) == (1, reply)


def test_client_exit_1_on_line_too_long(start_server):
    server = start_server("--max-line", "10")
    result = client(server, "x" * 11)
    assert (result.returncode, result.stdout) == (1, b"Line too long.\n")


def test_client_exit_1_when_refused(start_server):
    server = start_server("--max-clients", "1")
    with server.connect() as held:
        held.sendall(b"help\n")
        assert held.recv(100) == HELP
        result = client(server, "help")
    assert (result.returncode, result.stdout) == (1, b"Too many connections, bye!\n")


def test_client_exit_3_when_nothing_listens(server):
    port = server.port
    assert server.stop() == 0
    result = run_greencmd("client", "--port", str(port), "help")
    assert result.returncode == 3 and result.stdout == b""
    assert result.stderr == (
        b"greencmd: cannot connect to 127.0.0.1:%d: connection refused\n" % port)


def test_client_exit_3_when_the_reply_times_out(start_server, tmp_path):
    fifo = tmp_path / "never.fifo"
    os.mkfifo(fifo)
    # The client's close looks like a half-close, so --command-timeout ends the tail.
    server = start_server("--lastlog-file", str(fifo), "--command-timeout", "3")
    result = client(server, "--timeout", "0.5", "lastlog")
    assert result.returncode == 3
    assert result.stderr == b"greencmd: no reply from 127.0.0.1:%d within 0.5 seconds\n" \
        % server.port


def test_client_command_with_a_newline_is_a_usage_error(server):
    result = client(server, "help\nhelp")
    assert result.returncode == 2 and b"one line" in result.stderr


def test_client_takes_host_and_port_from_the_environment(server):
    env = greencmd_env(GREENCMD_HOST="127.0.0.1", GREENCMD_PORT=str(server.port))
    result = run_greencmd("client", "help", env=env)
    assert (result.returncode, result.stdout) == (0, HELP)


def test_client_interactive_from_a_pipe(server):
    result = client(server, stdin=b"help\nnope\n\nhelp\n")
    # One error reply among them: exit 1, whatever came first.
    assert (result.returncode, result.stdout, result.stderr) == (
        1, HELP + NOT_FOUND + HELP, b"")
    assert client(server, stdin=b"help\n\nhelp\n").returncode == 0


def test_client_interactive_stops_when_the_server_closes(server):
    proc = subprocess.Popen(
        [sys.executable, "-m", "greencmd", "client", "--port", str(server.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=greencmd_env())
    proc.stdin.write(b"help\nexit\n")
    proc.stdin.flush()
    # stdin stays open: the client must still end, because the server closed.
    assert proc.stdout.read() == HELP
    assert proc.wait(10) == 0
    proc.stdin.close()


def test_serve_options_from_the_environment(start_server):
    server = start_server(env=greencmd_env(GREENCMD_MAX_CLIENTS="1", GREENCMD_QUIET="1"))
    with server.connect() as held:
        held.sendall(b"help\n")
        assert held.recv(100) == HELP
        assert server.talk(b"help\n") == b"Too many connections, bye!\n"
    assert server.count_log("Cmd received") == 0


def test_python_m_greencmd_and_console_script():
    assert run_greencmd("--version").stdout.startswith(b"greencmd, version")
    script = shutil.which("greencmd", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("greencmd is not installed in this environment (run from a checkout)")
    result = subprocess.run([script, "--help"], capture_output=True, timeout=30)
    assert result.returncode == 0 and b"serve" in result.stdout and b"client" in result.stdout


def test_client_reads_requests_from_a_regular_file(server, tmp_path):
    requests = tmp_path / "requests.txt"
    requests.write_bytes(b"help\nlastlog 2\n" * 200)
    with open(requests, "rb") as stdin:
        result = run_greencmd("client", "--port", str(server.port), stdin=stdin,
                              env=greencmd_env())
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == (HELP + lastlog_of(SAMPLE_LINES[-2:])) * 200


def test_client_with_empty_stdin_sends_nothing_and_exits_0(server):
    with open(os.devnull, "rb") as stdin:
        result = run_greencmd("client", "--port", str(server.port), stdin=stdin,
                              env=greencmd_env())
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_client_from_stdin_exits_1_when_any_reply_is_an_error(server):
    result = client(server, stdin=b"help\ndate\nhelp\n")
    assert result.returncode == 1
    assert result.stdout == HELP + b"Command not found.\n" + HELP


def test_client_error_lookalikes_inside_a_lastlog_body_are_not_errors(start_server, tmp_path):
    source = tmp_path / "odd.log"
    source.write_bytes(b"Command not found.\nAn error occured: quoted in a log\n")
    server = start_server("--lastlog-file", str(source))
    result = client(server, "lastlog", "2")
    assert result.returncode == 0
    assert result.stdout == lastlog_of([b"Command not found.",
                                        b"An error occured: quoted in a log"])


@pytest.mark.parametrize("request_words", [["help"], ["follow", "2"]])
def test_client_exit_3_when_the_server_closes_without_replying(request_words):
    # follow reads until the server ends it: a close before any line is the same
    # failure, with the same hint (a plain client on a TLS port sees exactly this).
    with scripted_server(lambda conn: conn.recv(100)) as port:  # then closes
        result = run_greencmd("client", "--port", str(port), *request_words)
    assert result.returncode == 3 and result.stdout == b""
    assert result.stderr == (b"greencmd: 127.0.0.1:%d closed the connection without a reply "
                             b"(a TLS port does that to a client without --tls)\n" % port)


@pytest.mark.parametrize("half", [b"Begin lastlog\nline 1\n", b"An error occured: x"])
def test_a_reply_cut_short_is_printed_then_exit_3(half):
    # A server may cut a reply (shutdown past --grace, a kill): what came is shown,
    # and it must not pass for a whole reply, one server or many.
    with scripted_server(lambda conn: (conn.recv(100), conn.sendall(half)), 2) as port:
        single = run_greencmd("client", "--port", str(port), "lastlog")
        fleet = run_greencmd("client", "--port", str(port), "--json", "lastlog")
    assert (single.returncode, single.stdout) == (3, half)
    assert single.stderr == (b"greencmd: 127.0.0.1:%d closed the connection in the middle "
                             b"of a reply\n" % port)
    outcome = json.loads(fleet.stdout)
    assert (fleet.returncode, outcome["exit"], outcome["reply"]) == (3, 3, half.decode())
    assert outcome["error"] == "closed the connection in the middle of a reply"


def test_client_exit_gets_no_reply_and_exits_0(server):
    result = client(server, "exit")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_help_texts_say_what_each_command_takes():
    client = run_greencmd("client", "--help").stdout.decode()
    assert "0 picks a free one" not in client
    assert "holds the token itself" in " ".join(client.split())
    bench = " ".join(run_greencmd("bench", "--help").stdout.decode().split())
    assert "Address to bind" not in bench and "The server to load." in bench
    assert "(idle scenario)" not in bench


def test_a_config_error_on_the_command_line_does_not_name_the_variable(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nport = 'x'\n")
    result = run_greencmd("serve", "--config", str(bad))
    assert result.returncode == 2
    assert b"Invalid value for '--config': " in result.stderr
    assert b"GREENCMD_CONFIG" not in result.stderr


@pytest.mark.parametrize("env, tracked", [
    ({}, "False"), ({"GEVENT_TRACK_GREENLET_TREE": "1"}, "True"),
    ({"GEVENT_TRACK_GREENLET_TREE": "0"}, "False")])
def test_gevent_engine_spawns_untracked_unless_the_environment_says(env, tracked):
    code = ("import gevent; from greencmd.gevent_engine.server import configure_gevent; "
            "configure_gevent(); print(gevent.config.track_greenlet_tree)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            env=greencmd_env(**env), timeout=60)
    assert result.stdout.decode().strip() == tracked, result.stderr
