"""--metrics: scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import socket
import urllib.request

from conftest import HELP, free_port, run_greencmd, wait_until
from prometheus_client.parser import text_string_to_metric_families

from greencmd.core.metrics import REQUEST_SECONDS


def scrape(port: int) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as page:
        assert page.headers["Content-Type"].startswith("text/plain")
        text = page.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family, **labels) -> float:
    for sample in family.samples:
        if sample.name.endswith("_total") or sample.name == family.name:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError("no sample %r in %s" % (labels, family.name))


def test_metrics_carry_the_stats_latency_and_the_process(start_server):
    port = free_port()
    server = start_server("--metrics", "127.0.0.1:%d" % port)
    assert server.talk(b"help\nhelp\nnope\nstats\n").startswith(HELP * 2)
    families = scrape(port)
    assert value(families["greencmd_commands"], command="help") == 2
    assert value(families["greencmd_commands"], command="stats") == 1
    assert value(families["greencmd_commands_unknown"]) == 1
    assert value(families["greencmd_sessions_accepted"]) == 1
    assert value(families["greencmd_sessions_max"]) == 10
    assert families["greencmd_sessions_open"].type == "gauge"
    assert families["greencmd_commands"].type == "counter"
    latency = families["greencmd_command_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["command"]: s.value for s in latency.samples
              if s.name == "greencmd_command_seconds_count"}
    assert counts == {"help": 2, "unknown": 1, "stats": 1}
    assert "process_resident_memory_bytes" in families
    for family in families.values():
        assert family.documentation, family.name  # every metric has a help text
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10):
        pass  # a second scrape works too
    server.wait_for_log(lambda line: ": stats" in line)


def test_metrics_on_a_public_address_follow_protected_mode():
    result = run_greencmd("serve", "--port", "0", "--metrics", "0.0.0.0:9100")
    assert result.returncode == 2
    assert b"refusing to serve metrics on 0.0.0.0 without --auth-token-file" in result.stderr
    bad = run_greencmd("serve", "--port", "0", "--metrics", "localhost")
    assert bad.returncode == 2 and b"has no port" in bad.stderr


def test_a_scraper_that_never_finishes_its_request_is_dropped(start_server):
    # gevent's pywsgi and twisted.web (12 hours) kept a half-sent request open for
    # ever: each held a descriptor, and enough of them would leave the command port
    # none to accept with. Every engine drops one after REQUEST_SECONDS.
    port = free_port()
    server = start_server("--metrics", "127.0.0.1:%d" % port)
    scrape(port)
    before = server.fd_count()
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /metr")
        for sock in stalled:
            sock.settimeout(REQUEST_SECONDS + 10)
            try:
                assert sock.recv(100) == b""  # closed, nothing sent
            except ConnectionResetError:
                pass  # or cut off: dropped either way
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: server.fd_count() <= before, 10, "their descriptors closed")
    assert value(scrape(port)["greencmd_sessions_max"]) == 10  # and scrapes still work
