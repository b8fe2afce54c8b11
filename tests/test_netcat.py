"""Real netcat (netcat-openbsd) against the server, as a user would type it."""

import shutil
import subprocess

import pytest
from conftest import HELP, NOT_FOUND, SAMPLE_LINES, hash_line, lastlog_of

NC = shutil.which("nc")
pytestmark = pytest.mark.skipif(NC is None, reason="nc is not installed "
                                "(apt-get install netcat-openbsd; .ci/run installs it)")


def nc(server, data: bytes, *flags: str) -> bytes:
    # -N: shut down the sending side at EOF on stdin, like `greencmd client`.
    result = subprocess.run([NC, "-N", *flags, "127.0.0.1", str(server.port)], input=data,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_netcat_session(server, tmp_path):
    (tmp_path / "f").write_bytes(b"netcat")
    data = b"help\nlastlog 2\ncomhash %s\nbogus\nexit\n" % bytes(tmp_path / "f")
    assert nc(server, data) == HELP + lastlog_of(SAMPLE_LINES[-2:]) + hash_line(b"netcat") \
        + NOT_FOUND


def test_netcat_crlf(server):
    assert nc(server, b"help\nlastlog 1\n", "-C") == HELP + lastlog_of(SAMPLE_LINES[-1:])


def test_netcat_without_final_newline(server):
    assert nc(server, b"help") == HELP
