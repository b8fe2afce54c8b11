"""stats: the figures protocol.md lists, counted on real sessions."""

from __future__ import annotations

import json
import os
import re

from conftest import read_until, run_greencmd

from greencmd import __version__


def figures(reply: bytes) -> dict[str, str]:
    lines = reply.decode().splitlines()
    assert lines[0] == "Begin stats" and lines[-1] == "End stats", reply
    found = dict(line.split(" ", 1) for line in lines[1:-1])
    for name, value in found.items():
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        if name not in ("version", "engine"):
            assert re.fullmatch(r"\d+(\.\d+)?", value), (name, value)
    return found


def test_a_fresh_server_reports_every_required_figure(start_server, engine):
    server = start_server("--max-clients", "7")
    stats = figures(server.talk(b"stats\n"))
    assert stats["version"] == __version__
    assert stats["engine"] == engine
    assert int(stats["pid"]) == server.proc.pid
    assert float(stats["uptime_seconds"]) >= 0
    assert stats["sessions_open"] == "1"
    assert stats["sessions_max"] == "7"
    assert stats["sessions_accepted"] == "1"
    assert stats["sessions_refused"] == "0"
    assert stats["commands_served"] == "0"
    assert not [name for name in stats if name.startswith("command_")]


def test_counts_follow_what_happened(start_server, tmp_path):
    server = start_server("--max-clients", "1")
    server.talk(b"help\nhelp\nlastlog 1\ncomhash %s\nnonsense\nexit\n" % bytes(tmp_path))
    with server.connect() as held:
        held.sendall(b"help\n")
        read_until(held, b"\n")
        assert server.talk(b"stats\n") == b"Too many connections, bye!\n"
    stats = figures(server.talk(b"stats\n"))
    assert stats["sessions_accepted"] == "4"
    assert stats["sessions_refused"] == "1"
    # help x2, lastlog, comhash, nonsense, help: "exit" gets no reply, stats is this one.
    assert stats["commands_served"] == "6"
    assert stats["command_help"] == "3"
    assert stats["command_lastlog"] == "1"
    assert stats["command_comhash"] == "1"
    assert "command_nonsense" not in stats and "command_exit" not in stats


def test_invented_words_do_not_grow_the_table(start_server):
    server = start_server()
    server.talk(b"".join(b"word%d\n" % i for i in range(2000)))
    stats = figures(server.talk(b"stats\n"))
    assert stats["commands_served"] == "2000"
    assert len(stats) < 20


def test_stats_of_each_worker_are_its_own(tmp_path):
    from conftest import Server, greencmd_env

    server = Server(["--port", "0", "--workers", "2", "--log-file", "",
                     "--lastlog-file", os.devnull], tmp_path, greencmd_env())
    try:
        pids = {int(figures(server.talk(b"stats\n"))["pid"]) for _ in range(40)}
        assert pids <= set(server.children())  # a worker answers, not the supervisor
    finally:
        assert server.stop() == 0


def test_client_stats_json_gives_the_figures_as_an_object(server):
    result = run_greencmd("client", "--port", str(server.port), "--json", "stats")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    figures = record["stats"]
    assert figures["engine"] in ("gevent", "twisted", "asyncio")
    assert figures["pid"] == server.proc.pid and isinstance(figures["uptime_seconds"], float)
    assert figures["sessions_open"] == 1 and figures["version"] == __version__
    assert record["reply"].startswith("Begin stats\n")
    help_only = json.loads(run_greencmd("client", "--port", str(server.port), "--json",
                                        "help").stdout)
    assert "stats" not in help_only
