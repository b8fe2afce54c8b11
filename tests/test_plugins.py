"""Plugin commands: real distributions, installed with pip, found through entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO, greencmd_env, read_until, reset

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
badstr = "greencmd_test_plugins.ok:badstr"
swallow = "greencmd_test_plugins.ok:swallow"

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


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("cannot print me")


def badstr(arg):
    raise Unprintable()


def swallow(arg):
    # A plugin that catches everything it thinks is an error, as plugins do.
    try:
        gevent.sleep(1.5)
    except Exception as exc:
        with open(arg, "w") as f:
            f.write(type(exc).__name__)
    return "slept"
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
        b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, quit, badstr, boom, "
        b"disk [PATH], Echo, loadavg, nap, notstr, spawn, swallow\n")


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
    server.wait_for_log(lambda line: "failed: ValueError: boom went now" in line)
    assert server.count_log("Command boom (greencmd_test_plugins.ok:boom) failed: "
                            "ValueError: boom went now") == 1
    server.wait_for_count("Traceback (most recent call last):", 2)
    assert server.talk(b"echo still here\n") == b"echo: still here\n"


def test_a_plugin_failing_again_and_again_logs_one_line_each_not_a_flood(plugged):
    server = plugged("--quiet")
    reply = server.talk(b"boom now\n" * 50 + b"echo done\n")
    assert reply == b"An error occured: boom went now\n" * 50 + b"echo: done\n"
    server.wait_for_count("Command boom (greencmd_test_plugins.ok:boom) failed", 50)
    # The traceback once a minute per command: 50 failures cost 50 lines and one traceback.
    assert server.count_log("Traceback (most recent call last):") == 1
    assert server.count_log("\t") < 30


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
            b"An error occured: nap did not finish within 1 second; stopped\n")
        assert time.monotonic() - started < 5


@pytest.mark.engines("gevent")
def test_a_plugin_using_gevent_subprocess_leaves_lastlog_working(plugged):
    server = plugged()
    assert server.talk(b"spawn\n") == b"spawned\n"
    for _ in range(3):
        assert server.talk(b"lastlog 1\n") == b"Begin lastlog\nline 20 of the sample log\n" \
            b"End lastlog\n"


def test_a_plugin_exception_that_cannot_be_printed_costs_one_request(plugged):
    server = plugged()
    reply = server.talk(b"help\nbadstr\necho after\n")
    assert reply.splitlines()[1:] == [b"An error occured: Unprintable", b"echo: after"]
    server.wait_for_log(lambda line: "Command badstr" in line and "Unprintable" in line)


def test_a_reset_is_not_an_exception_a_plugin_can_swallow(plugged, tmp_path):
    server = plugged()
    marker = tmp_path / "caught"
    with server.connect() as sock:
        sock.sendall(b"swallow %s\n" % bytes(marker))
        time.sleep(0.3)
        reset(sock)
    server.wait_for_log(lambda line: "Connection was reset by peer." in line)
    time.sleep(1.6)  # past the plugin's own sleep
    assert not marker.exists(), marker.read_text()
    assert server.count_log("Command swallow") == 0
