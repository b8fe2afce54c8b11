"""The examples under examples/: the systemd unit and its configuration file."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys

import click
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
    service = unit()["Service"]
    # A reload is a SIGHUP: a renewed TLS certificate is loaded (test_tls.py).
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["RestartPreventExitStatus"] == "2"  # a typo must not restart in a loop
    assert service["UMask"] == "0077" and service["CapabilityBoundingSet"] == ""


def test_the_token_is_never_readable_by_others_while_it_is_made(tmp_path):
    # The install steps of the unit's comment, run as written (without chown).
    steps = [line.strip("# ").strip() for line in
             (SYSTEMD / "greencmd.service").read_text().splitlines()
             if "/etc/greencmd/token" in line and line.startswith("#   ")]
    assert steps[0].startswith("install -m 600") and "/dev/null" in steps[0]
    token = tmp_path / "token"
    script = "\n".join(step.replace(" -o greencmd -g greencmd", "")
                       .replace("/etc/greencmd/token", str(token)) for step in steps)
    subprocess.run(["sh", "-e", "-c", "umask 022\n" + script], check=True, timeout=30)
    assert token.stat().st_mode & 0o777 == 0o600
    assert len(token.read_text().strip()) == 64


def test_every_key_of_the_example_config_is_a_serve_option_of_the_right_type():
    with click.Context(serve) as ctx:
        defaults, commands = load(str(SYSTEMD / "greencmd.toml"), serve, ctx)
    assert defaults["auth_token_file"] == "/etc/greencmd/token"
    assert defaults["tls_cert"] and defaults["tls_key"]
    assert [command.name for command in commands] == ["uptime", "unit"]


def installed_copy(tmp_path):
    """The unit as installed, with this Python in place of /opt/greencmd/bin/greencmd."""
    text = (SYSTEMD / "greencmd.service").read_text().replace(
        "/opt/greencmd/bin/greencmd serve", "%s -m greencmd serve" % sys.executable)
    copy = tmp_path / "greencmd.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_scores_the_unit_2_or_less(tmp_path):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                             str(installed_copy(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for greencmd.service: ([0-9.]+)",
                      result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


def test_systemd_analyze_verifies_the_unit(tmp_path):
    service = installed_copy(tmp_path)
    socket_unit = tmp_path / "greencmd.socket"
    socket_unit.write_text((SYSTEMD / "greencmd.socket").read_text())
    assert unit()["Service"]["Type"] == "notify" and unit()["Service"]["WatchdogSec"]
    result = subprocess.run(["systemd-analyze", "verify", str(service), str(socket_unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "greencmd.service" not in result.stderr, result.stderr
