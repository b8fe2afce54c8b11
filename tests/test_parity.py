"""The three engines side by side: the same bytes in, the same bytes out."""

import os
import subprocess
import sys

import pytest
from conftest import ENGINES, greencmd_env, no_twisted_env, reset, run_greencmd

TRANSCRIPTS = {
    "mixed": b"help\nLASTLOG 3\nlastlog 1001\ncomhash {f}\ncomhash {d}\ncomhash\n"
             b"\n  \nnope \xff\x00\r\ncomhash {missing}\nhelp",
    "exit midway": b"help\nexit\nhelp\n",
    "long line": b"help\n" + b"x" * 40 + b"\nhelp\n",
    "crlf and cr": b"help\r\nhelp\r\r\nlastlog 2\r\n",
    "fifo": b"comhash {fifo}\nlastlog 2\n",
}


@pytest.mark.engines("gevent")
def test_engines_give_byte_identical_transcripts(start_server, tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(50000))
    os.mkfifo(tmp_path / "fifo")
    fields = {b"{f}": bytes(tmp_path / "f"), b"{d}": bytes(tmp_path),
              b"{missing}": bytes(tmp_path / "missing \xff"), b"{fifo}": bytes(tmp_path / "fifo")}
    replies = {}
    for engine in ENGINES:
        # start_server names --engine gevent first; click takes the last one given.
        server = start_server("--max-line", "32", "--engine", engine)
        for name, transcript in TRANSCRIPTS.items():
            for key, value in fields.items():
                transcript = transcript.replace(key, value)
            replies[engine, name] = server.talk(transcript)
    for name in TRANSCRIPTS:
        for engine in ENGINES[1:]:
            assert replies["gevent", name] == replies[engine, name], (engine, name)
        assert replies["gevent", name], name


@pytest.mark.engines("gevent")
def test_engines_agree_on_a_reset_mid_request(start_server):
    for engine in ENGINES:
        server = start_server("--engine", engine)
        sock = server.connect()
        sock.sendall(b"help\nlastlog\n")
        reset(sock)
        assert server.talk(b"help\n").startswith(b"Commands:")


def test_twisted_engine_without_twisted_says_how_to_install_it(tmp_path):
    result = run_greencmd("serve", "--engine", "twisted", "--port", "0", "--log-file", "",
                          env=no_twisted_env(tmp_path))
    assert result.returncode == 2
    assert b"pip install 'greencmd[twisted]'" in result.stderr
    assert b"from a source checkout: pip install '.[twisted]'" in result.stderr
    assert b"Traceback" not in result.stderr


def test_gevent_engine_never_imports_twisted():
    code = ("import sys, greencmd.tools.cli, greencmd.gevent_engine.server,"
            " greencmd.client.single,"
            " greencmd.client.fleet, greencmd.gevent_engine.commands;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))")
    out = subprocess.run([sys.executable, "-c", code], env=greencmd_env(), capture_output=True,
                         timeout=30)
    assert out.stdout == b"[]\n", out.stderr
