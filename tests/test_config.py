"""--config FILE: serve options from [serve], precedence, and one-sentence errors (exit 2)."""

from __future__ import annotations

import re

import pytest
from conftest import greencmd_env, run_greencmd


def figure(stats: bytes, name: str) -> str:
    match = re.search(rb"^%s (\S+)$" % name.encode(), stats, re.MULTILINE)
    assert match, stats
    return match.group(1).decode()


def write(tmp_path, text: str):
    path = tmp_path / "greencmd.toml"
    path.write_text(text)
    return path


def test_serve_options_come_from_the_file(start_server, tmp_path):
    config = write(tmp_path, "[serve]\nmax-clients = 2\nidle_timeout = 1.5\nquiet = true\n")
    server = start_server("--config", str(config))
    assert figure(server.talk(b"stats\n"), "sessions_max") == "2"
    with server.connect() as sock:  # idle_timeout from the file
        assert sock.recv(100) == b"Idle timeout, bye!\n"
    assert server.count_log("Cmd received") == 0  # quiet from the file


def test_the_environment_wins_over_the_file_and_the_command_line_over_both(
        start_server, tmp_path):
    config = write(tmp_path, "[serve]\nmax-clients = 2\n")
    env = greencmd_env(GREENCMD_MAX_CLIENTS="3", GREENCMD_CONFIG=str(config))
    server = start_server(env=env)
    assert figure(server.talk(b"stats\n"), "sessions_max") == "3"
    server = start_server("--max-clients", "4", env=env)
    assert figure(server.talk(b"stats\n"), "sessions_max") == "4"


def test_an_empty_log_file_variable_wins_over_the_file(start_server, tmp_path):
    log = tmp_path / "from-config.log"
    config = write(tmp_path, '[serve]\nlog-file = "%s"\n' % log)
    server = start_server("--config", str(config), "--lastlog-file", str(config),
                          env=greencmd_env(GREENCMD_LOG_FILE=""))
    server.talk(b"help\n")
    assert not log.exists()


@pytest.mark.parametrize("text, words", [
    ("not toml [", ["is not valid TOML"]),
    ("[serve]\nprot = 1\n", ["[serve]", "unknown key 'prot'"]),
    ("[serve]\nport = \"abc\"\n", ["[serve] port", "must be a whole number, not 'abc'"]),
    ("[serve]\nport = 70000\n", ["[serve] port", "70000 is not in the range"]),
    ("[serve]\nport = true\n", ["[serve] port", "must be a whole number"]),
    ("[serve]\nquiet = \"yes\"\n", ["[serve] quiet", "must be true or false"]),
    ("[serve]\ngrace = \"10\"\n", ["[serve] grace", "must be a number"]),
    ("[serve]\nengine = \"trio\"\n", ["[serve] engine", "trio"]),
    ("[serve]\nconfig = \"other.toml\"\n", ["unknown key 'config'"]),
    ("serve = 3\n", ["'serve' must be a table"]),
    ("[server]\nport = 1\n", ["unknown table or key 'server'"]),
    ("[commands.help]\nrun = [\"ls\"]\n", ["[commands.help]", "'help' is a built-in command"]),
    ("[commands.Follow]\nrun = [\"ls\"]\n", ["'Follow' is a built-in command"]),
    ("[commands.auth]\nrun = [\"ls\"]\n", ["'auth' is a built-in command"]),
    ("[commands.x]\nrun = []\n", ["[commands.x]", "'run' must be a non-empty list"]),
    ("[commands.x]\nrun = \"ls -l\"\n", ["'run' must be a non-empty list"]),
    ("[commands.x]\nrun = [\"ls\", 3]\n", ["'run' must be a non-empty list"]),
    ("[commands.x]\n", ["'run' must be a non-empty list"]),
    ("[commands.x]\nrun = [\"ls\"]\nargs = \"all\"\n", ["'args' must be \"none\" or"]),
    ("[commands.x]\nrun = [\"ls\"]\nshell = true\n", ["unknown key 'shell'"]),
    ("[commands.x]\nrun = [\"ls\"]\nhelp = 3\n", ["'help' must be one line"]),
    ("[commands.\"a b\"]\nrun = [\"ls\"]\n", ["only letters, digits"]),
    ("[commands.up]\nrun = [\"a\"]\n[commands.UP]\nrun = [\"b\"]\n", ["only in case"]),
])
def test_a_bad_file_is_one_sentence_naming_file_and_key_exit_2(tmp_path, text, words):
    config = write(tmp_path, text)
    result = run_greencmd("serve", "--port", "0", "--log-file", "", "--config", str(config))
    assert result.returncode == 2, result.stderr
    error = result.stderr.decode().strip().splitlines()[-1]
    assert error.startswith("Error: Invalid value for '--config'")
    assert str(config) in error
    for word in words:
        assert word in error
    assert "Traceback" not in result.stderr.decode()


def test_a_missing_file_exit_2(tmp_path):
    result = run_greencmd("serve", "--port", "0", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert b"cannot read %s: No such file or directory" % bytes(tmp_path / "none.toml") \
        in result.stderr
