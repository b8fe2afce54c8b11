"""Plugin commands: real distributions, installed with pip, found through entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO, greencmd_env, read_until

BROKEN = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "greencmd-test-plugins"
version = "0.1"

[project.entry-points."greencmd.commands"]
broken = "greencmd_test_plugins.fails_on_import:run"
help = "greencmd_test_plugins.ok:echo"
"bad name" = "greencmd_test_plugins.ok:echo"
boom = "greencmd_test_plugins.ok:boom"
notstr = "greencmd_test_plugins.ok:notstr"
nap = "greencmd_test_plugins.ok:nap"
Echo = "greencmd_test_plugins.ok:echo"
spawn = "greencmd_test_plugins.ok:spawn"

[tool.setuptools]
packages = ["greencmd_test_plugins"]
""",
    "greencmd_test_plugins/__init__.py": "",
    "greencmd_test_plugins/fails_on_import.py": "raise RuntimeError('no database here')\n",
    "greencmd_test_plugins/ok.py": """
import gevent


def echo(arg):
    return "echo: " + arg


def boom(arg):
    raise ValueError("boom went " + arg)


def notstr(arg):
    return 42


def nap(arg):
    gevent.sleep(float(arg))
    return "rested"


def spawn(arg):
    import gevent.subprocess
    return gevent.subprocess.check_output(["echo", "spawned"]).decode()
""",
}


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> str:
    """A directory where pip installed the example plugin and a test distribution."""
    work = tmp_path_factory.mktemp("plugin-sources")
    example = work / "example"
    shutil.copytree(REPO / "examples" / "greencmd-example-plugin", example)
    broken = work / "test-plugins"
    for name, text in BROKEN.items():
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_text(text)
    target = tmp_path_factory.mktemp("site")
    for source in (example, broken):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target", str(target),
                        str(source)], check=True, capture_output=True)
    return str(target)


@pytest.fixture
def plugged(start_server, plugin_site):
    env = greencmd_env()
    env["PYTHONPATH"] += os.pathsep + plugin_site

    def start(*args: str):
        return start_server(*args, env=env)

    return start


def test_help_lists_plugins_by_name_after_the_built_ins(plugged):
    assert plugged().talk(b"help\n") == (
        b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, boom, disk, "
        b"Echo, loadavg, nap, notstr, spawn\n")


def test_the_example_plugin_answers(plugged, tmp_path):
    server = plugged()
    reply = server.talk(b"disk %s\nloadavg\n" % bytes(tmp_path))
    disk, load = reply.decode().splitlines()
    assert disk.startswith("%s: " % tmp_path) and "free of" in disk
    assert load.startswith("load average: ")


def test_a_plugin_gets_the_argument_and_any_case_matches(plugged):
    assert plugged().talk(b"ECHO  two words \n") == b"echo: two words\n"


def test_a_plugin_that_raises_gets_the_error_line_and_one_logged_traceback(plugged):
    server = plugged()
    assert server.talk(b"boom now\ndisk /no/such/dir\nhelp\n").splitlines()[:2] == [
        b"An error occured: boom went now",
        b"An error occured: [Errno 2] No such file or directory: '/no/such/dir'"]
    server.wait_for_log(lambda line: "ValueError: boom went now" in line)
    assert server.count_log("Command boom (greencmd_test_plugins.ok:boom) failed:") == 1
    assert server.count_log("Traceback (most recent call last):") == 2
    assert server.talk(b"echo still here\n") == b"echo: still here\n"


def test_a_plugin_that_returns_no_string_is_an_error(plugged):
    assert plugged().talk(b"notstr\n") == (
        b"An error occured: greencmd_test_plugins.ok:notstr returned int, not a string\n")


def test_plugins_that_cannot_load_are_named_in_the_log_and_left_out(plugged):
    server = plugged()
    server.wait_for_log(lambda line: "Plugin command broken left out: cannot load "
                        "greencmd_test_plugins.fails_on_import:run: RuntimeError: no database "
                        "here" in line)
    server.wait_for_log(lambda line: "Plugin command help left out: 'help' is a built-in"
                        in line)
    server.wait_for_log(lambda line: "Plugin command bad name left out: a command name" in line)
    assert server.talk(b"broken\nhelp\n").startswith(
        b"Command not found.\nCommands: lastlog [N]")


def test_a_configured_command_wins_over_a_plugin_of_the_same_name(plugged, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[commands.disk]\nrun = ["echo", "configured"]\n')
    server = plugged("--config", str(config))
    assert server.talk(b"disk\n") == b"Begin disk\nconfigured\nEnd disk\n"
    server.wait_for_log(lambda line: "Plugin command disk left out: a configured command"
                        in line)


def test_command_timeout_applies_to_plugins(plugged):
    server = plugged("--command-timeout", "1")
    with server.connect() as sock:
        sock.sendall(b"nap 4\n")  # the twin waits for its thread at exit
        started = time.monotonic()
        # Other sessions are served meanwhile.
        assert server.talk(b"echo hi\n") == b"echo: hi\n"
        assert read_until(sock, b"\n") == (
            b"An error occured: nap did not finish within 1 seconds; stopped\n")
        assert time.monotonic() - started < 5


@pytest.mark.engines("gevent")
def test_a_plugin_using_gevent_subprocess_leaves_lastlog_working(plugged):
    server = plugged()
    assert server.talk(b"spawn\n") == b"spawned\n"
    for _ in range(3):
        assert server.talk(b"lastlog 1\n") == b"Begin lastlog\nline 20 of the sample log\n" \
            b"End lastlog\n"
