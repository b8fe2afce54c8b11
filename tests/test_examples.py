"""The examples under examples/: the systemd unit and its configuration file."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys

import click
import pytest
from conftest import REPO

from greencmd.core.configfile import load
from greencmd.tools.cli import serve

SYSTEMD = REPO / "examples" / "systemd"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(SYSTEMD / "greencmd.service")
    return parser


def test_the_unit_runs_greencmd_serve_with_the_example_config():
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/greencmd") and argv[1] == "serve"
    options = {param.opts[0] for param in serve.params if isinstance(param, click.Option)}
    for word in argv[2:]:
        if word.startswith("--"):
            assert word in options, word
    assert argv[argv.index("--config") + 1] == "/etc/greencmd/greencmd.toml"
    assert unit()["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reopens the log


def test_every_key_of_the_example_config_is_a_serve_option_of_the_right_type():
    with click.Context(serve) as ctx:
        defaults, commands = load(str(SYSTEMD / "greencmd.toml"), serve, ctx)
    assert defaults["auth_token_file"] == "/etc/greencmd/token"
    assert defaults["tls_cert"] and defaults["tls_key"]
    assert [command.name for command in commands] == ["uptime", "unit"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # The unit as installed, but with this Python in place of /opt/greencmd/bin/greencmd.
    text = (SYSTEMD / "greencmd.service").read_text().replace(
        "/opt/greencmd/bin/greencmd serve", "%s -m greencmd serve" % sys.executable)
    copy = tmp_path / "greencmd.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "greencmd.service" not in result.stderr, result.stderr
