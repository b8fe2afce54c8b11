"""greencmd compare, and the getPage lessons run both ways against a real HTTP server."""

import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import greencmd_env, no_twisted_env, run_greencmd

from greencmd.compare.pairs import CUT, PAIRS, render_pair, source_of

PAGE = b"<p>Mixed CASE Page</p>"


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.name)
def test_each_pair_comes_from_the_real_source(pair):
    for side in (pair.gevent, pair.twisted):
        lines = source_of(side)
        defs = [line for line in lines if line.lstrip().startswith(("def ", "class "))]
        assert len(defs) >= len(side.names)
        for name in side.names:
            assert any((" " + name.split(".")[-1] + "(") in " " + line
                       or line.lstrip().startswith("class " + name.split(".")[-1])
                       for line in defs), name


@pytest.mark.parametrize("width", [80, 120, 200])
def test_pairs_fit_the_width(width):
    for pair in PAIRS:
        text = render_pair(pair, width)
        assert max(len(line) for line in text.splitlines()) <= width
        lines = text.splitlines()
        second_rule = lines.index(lines[0], 1)
        assert " ".join(lines[1:second_rule]) == "[%s] %s" % (pair.name, pair.what)


def test_compare_shows_every_pair_without_twisted(tmp_path):
    result = run_greencmd("compare", "--width", "160", env=no_twisted_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for pair in PAIRS:
        assert "[%s] " % pair.name in out
    assert "deferToThread" in out and "pool.apply" in out and "spawnProcess" in out


def test_compare_one_pair():
    out = run_greencmd("compare", "comhash", "--width", "120").stdout.decode()
    assert out.count("\n[") == 1 and out.splitlines()[1].startswith("[comhash]")


def test_compare_unknown_pair_is_a_usage_error():
    result = run_greencmd("compare", "nope")
    assert result.returncode == 2 and b"'nope' is not one of 'session', 'ordering'" \
        in result.stderr
    assert b"Traceback" not in result.stderr


def test_compare_help_lists_every_pair_name():
    out = run_greencmd("compare", "--help").stdout.decode()
    listed = " ".join(out.split())  # help text is folded to the terminal's width
    assert ", ".join(pair.name for pair in PAIRS) in listed


@pytest.mark.parametrize("name", ["SESSION", "Session", "GetPage-Lower"])
def test_compare_names_match_in_any_case(name):
    result = run_greencmd("compare", name, "--width", "100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[1].startswith("[%s]" % name.lower())


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.name)
def test_identifiers_are_never_split_across_lines_at_80_columns(pair):
    sides = (pair.gevent, pair.twisted)
    whole = set(re.findall(r"\w+", "\n".join(
        line for side in sides for line in ["gevent Twisted " + side.path, *source_of(side)])))
    body = render_pair(pair, 80).splitlines()[3:]  # below the title
    assert max(map(len, body)) <= 80
    shown = [word for line in body for word in re.findall(r"\w+" + CUT + "?", line)]
    fragments = [word for word in shown if not word.endswith(CUT) and word not in whole]
    assert fragments == []
    assert any(word.endswith(CUT) for word in shown) or pair.name.startswith("getpage")


class Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        found = self.path == "/page"
        body = PAGE if found else b"gone"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def lesson(engine, name, url):
    return subprocess.run([sys.executable, "-m", "greencmd.compare.getpage", "--engine", engine,
                           name, url], env=greencmd_env(), capture_output=True, timeout=60)


@pytest.mark.parametrize("name, path, expected", [
    ("print", "/page", PAGE + b"\n"),
    ("lower", "/page", PAGE.lower() + b"\n"),
    ("missing", "/nothing", b"Could not get {url}: 404 Not Found\n"),
])
def test_getpage_lessons_print_the_same_both_ways(http_url, name, path, expected):
    url = http_url + path
    results = [lesson(engine, name, url) for engine in ("gevent", "twisted")]
    for result in results:
        assert (result.returncode, result.stderr) == (0, b"")
        assert result.stdout == expected.replace(b"{url}", url.encode())


@pytest.mark.parametrize("lesson_engine", ["gevent", "twisted"])
def test_getpage_unreachable_server_is_one_line_on_stderr(lesson_engine):
    result = lesson(lesson_engine, "print", "http://127.0.0.1:1/page")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.startswith(b"getpage: ") and result.stderr.count(b"\n") == 1


def test_getpage_runs_against_its_own_demo_server():
    result = subprocess.run([sys.executable, "-m", "greencmd.compare.getpage", "lower"],
                            env=greencmd_env(), capture_output=True, timeout=60)
    assert result.returncode == 0 and b"hello from the getpage lesson" in result.stdout
