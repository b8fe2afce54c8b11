"""greencmd bench against real servers: it runs, it checks replies, it reports errors."""

import json

from conftest import run_greencmd


def bench(server, *args):
    return run_greencmd("bench", "--port", str(server.port), "--seconds", "0.3", *args,
                        timeout=120)


def test_every_default_scenario_runs_with_zero_errors(start_server, tmp_path):
    server = start_server("--max-clients", "50", "--quiet")
    result = bench(server, "-c", "5", "--size-mib", "2", "--directory", str(tmp_path),
                   "--server-pid", str(server.proc.pid), "--json")
    assert result.returncode == 0, result.stderr
    results = {r["scenario"]: r for r in json.loads(result.stdout)}
    assert set(results) == {"unknown", "pipeline", "churn", "comhash", "lastlog"}
    for name, r in results.items():
        assert r["errors"] == 0 and r["count"] > 0 and r["rate"] > 0, (name, r)
        # Clock ticks are 10 ms: a short run of a cheap scenario may read 0.
        assert r["server_us_per_op"] is not None and r["server_us_per_op"] >= 0, name
    assert results["comhash"]["extra"]["hashlib_single_thread_mb_s"] > 0
    assert b"bench: unknown" in result.stderr  # progress on stderr


def test_table_for_people(start_server):
    server = start_server("--quiet")
    result = bench(server, "-c", "2", "unknown")
    assert result.returncode == 0
    header, row = result.stdout.decode().splitlines()[:2]
    assert header.split()[:3] == ["scenario", "rate", "unit"]
    assert row.split()[0] == "unknown" and row.split()[2] == "replies/s"


def test_wrong_replies_are_errors_and_exit_1(start_server):
    server = start_server("--max-clients", "2", "--quiet")
    result = bench(server, "-c", "5", "--json", "unknown")
    assert result.returncode == 1
    [r] = json.loads(result.stdout)
    assert r["errors"] >= 3
    assert any("Too many connections" in example for example in r["examples"])


def test_idle_scenario_reads_server_memory(start_server):
    server = start_server("--max-clients", "200", "--quiet")
    result = bench(server, "--idle", "100", "-c", "5", "--server-pid", str(server.proc.pid),
                   "--json", "idle")
    assert result.returncode == 0, result.stderr
    [r] = json.loads(result.stdout)
    assert r["errors"] == 0 and r["count"] > 0
    assert "rss_kib_per_session" in r["extra"]


def test_unreachable_server_is_one_sentence(server):
    port = server.port
    assert server.stop() == 0
    result = run_greencmd("bench", "--port", str(port), "unknown")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        b"Error: unknown: 127.0.0.1:%d: connection refused" % port)
    assert b"Traceback" not in result.stderr
