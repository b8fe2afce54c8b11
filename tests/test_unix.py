"""--unix PATH: a Unix socket instead of TCP, its file mode, stale files, peers by uid."""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest
from conftest import HELP, connections_that_fit, run_greencmd, stopped, wait_until


@pytest.fixture
def unix_server(start_server, tmp_path):
    path = tmp_path / "greencmd.sock"

    def start(*args: str):
        return start_server("--unix", str(path), *args), path

    return start


def test_serves_on_the_socket_with_its_mode_and_names_peers_by_uid(unix_server):
    server, path = unix_server("--unix-mode", "660")
    assert server.unix == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert server.talk(b"help\n") == HELP
    server.wait_for_log(lambda line: "Client connection from unix:uid=%d" % os.getuid() in line)
    server.wait_for_log(lambda line: "[CmdSession,0,unix:uid=%d] Cmd received from unix:uid=%d"
                        " : help" % (os.getuid(), os.getuid()) in line)


def test_netcat_works(unix_server):
    server, path = unix_server()
    result = subprocess.run(["nc", "-N", "-U", str(path)], input=b"help\nbogus\n",
                            capture_output=True, timeout=10)
    assert result.stdout == HELP + b"Command not found.\n"


def test_the_client_takes_unix(unix_server):
    server, path = unix_server()
    result = run_greencmd("client", "--unix", str(path), "lastlog", "1")
    assert result.returncode == 0
    assert result.stdout == b"Begin lastlog\nline 20 of the sample log\nEnd lastlog\n"


def test_the_listen_queue_is_greencmds_length(unix_server):
    # asyncio listened again on the socket greencmd made, with its own backlog (100).
    # A stopped server takes nothing from the queue, so 120 connections must all fit.
    server, path = unix_server()
    with stopped(server.proc.pid):
        assert connections_that_fit(socket.AF_UNIX, str(path), 120) == 120


def test_the_file_is_removed_at_shutdown(unix_server):
    server, path = unix_server()
    assert server.stop() == 0
    assert not path.exists()


def test_a_stale_socket_is_replaced(unix_server, tmp_path):
    path = tmp_path / "greencmd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server, _ = unix_server()
    assert server.talk(b"help\n") == HELP


def test_a_live_socket_is_refused(unix_server, tmp_path):
    server, path = unix_server()
    result = run_greencmd("serve", "--unix", str(path), "--log-file", "")
    assert result.returncode == 1
    assert result.stderr == b"greencmd: cannot listen on unix:%s: another server is listening " \
        b"on it\n" % bytes(path)
    assert server.talk(b"help\n") == HELP  # untouched


def test_a_path_that_is_not_a_socket_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    result = run_greencmd("serve", "--unix", str(path), "--log-file", "")
    assert result.returncode == 1
    assert result.stderr == b"greencmd: cannot listen on unix:%s: the path exists and is not " \
        b"a socket\n" % bytes(path)
    assert path.read_text() == "precious"


@pytest.mark.parametrize("mode", ["999", "rw", "7777"])
def test_a_bad_mode_is_a_usage_error(tmp_path, mode):
    result = run_greencmd("serve", "--unix", str(tmp_path / "s"), "--unix-mode", mode)
    assert result.returncode == 2
    assert b"is not an octal file mode" in result.stderr


@pytest.mark.engines("gevent")
def test_workers_share_a_unix_socket(tmp_path):
    from conftest import Server, greencmd_env

    path = tmp_path / "w.sock"
    server = Server(["--unix", str(path), "--workers", "2", "--log-file", "",
                     "--lastlog-file", os.devnull], tmp_path, greencmd_env())
    try:
        assert server.talk(b"help\n") == HELP
    finally:
        assert server.stop() == 0
    wait_until(lambda: not path.exists(), message="socket removed")
