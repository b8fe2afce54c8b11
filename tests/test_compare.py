"""greencmd compare, and the getPage lessons run both ways against a real HTTP server."""

import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import greencmd_env, no_twisted_env, run_greencmd

from greencmd.tools.compare.pairs import PAIRS, find_pair, line_count, source_of
from greencmd.tools.compare.render import render_pair

PAGE = b"<p>Mixed CASE Page</p>"


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.name)
def test_each_pair_comes_from_the_real_source(pair):
    for side in pair.sides:
        lines = source_of(side)
        defs = [line for line in lines
                if line.lstrip().startswith(("def ", "async def ", "class "))]
        names = [name for part in side.parts for name in part.names]
        assert len(defs) >= len(names)
        for name in names:
            assert any((" " + name.split(".")[-1] + "(") in " " + line
                       or line.lstrip().startswith("class " + name.split(".")[-1])
                       for line in defs), name


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.name)
def test_server_pairs_set_a_module_beside_its_namesake(pair):
    if pair.name.startswith("getpage") or pair.name == "timeout":
        return  # the lessons have no engine package; the idle timeout is placed differently
    first = {side.parts[0].path.split("/", 1)[1] for side in pair.sides}
    assert len(first) == 1, first
    for side in pair.sides:
        assert side.parts[0].path.startswith(side.engine.lower() + "_engine/")


def test_docstrings_are_cut_to_their_first_line():
    shown = "\n".join(source_of(find_pair("session").sides[0]))
    assert '"""Answer request after request; the log\'s reason once the client is done."""' \
        in shown
    for pair in PAIRS:
        for side in pair.sides:
            lines = source_of(side)
            for line in lines:
                # no docstring spans lines: a line that opens one closes it too
                if line.strip().startswith('"""'):
                    assert line.strip().endswith('"""') and len(line.strip()) > 3, line


def test_no_name_is_shown_twice():
    seen = set()
    for pair in PAIRS:
        for side in pair.sides:
            for part in side.parts:
                for name in part.names:
                    assert (part.path, name) not in seen, (part.path, name)
                    seen.add((part.path, name))


@pytest.mark.parametrize("width", [40, 80, 120, 200, 400])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.name)
def test_every_line_of_every_side_is_shown_whole_at_any_width(pair, width):
    text = render_pair(pair, width)
    for side in pair.sides:
        body = [line for line in source_of(side) if line.strip()]
        for line in body:
            assert line in text, line
    lines = text.splitlines()
    widest = max(len(line) for line in lines)
    longest_code = max(len(line) for side in pair.sides for line in source_of(side))
    side_by_side = " | " in lines[len(_title(pair, len(lines[0]))) + 2]
    if side_by_side:
        assert widest <= width
    else:
        assert widest <= max(width, longest_code)


def _title(pair, width):
    from greencmd.tools.compare.render import _title as title
    return title(pair, width)


def test_at_80_columns_sides_are_stacked_and_nothing_is_cut():
    text = render_pair(find_pair("session"), 80)
    assert "\u2026" not in text
    assert text.index("gevent: gevent_engine/session.py") < \
        text.index("Twisted: twisted_engine/session.py")
    wide = render_pair(find_pair("getpage-lower"), 200)
    assert " | " in wide  # short pairs fit side by side


def test_each_cost_line_is_shown_above_its_pair():
    costly = [pair for pair in PAIRS if pair.cost]
    assert {pair.name for pair in costly} >= {"timeout", "errors", "processes", "shutdown"}
    for pair in costly:
        text = render_pair(pair, 100)
        head = " ".join(text.split("\n")[:6])
        assert "Cost: gevent costs more here" in head


def test_compare_shows_every_pair_without_twisted(tmp_path):
    result = run_greencmd("compare", "--width", "160", env=no_twisted_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for pair in PAIRS:
        assert "[%s] " % pair.name in out
    assert "deferToThread" in out and "pool.apply" in out and "spawnProcess" in out
    assert out.count("[session] ") == 1


def test_compare_one_pair():
    out = run_greencmd("compare", "comhash", "--width", "120").stdout.decode()
    assert out.count("\n[") == 1 and out.splitlines()[1].startswith("[comhash]")


def test_compare_unknown_pair_is_a_usage_error():
    result = run_greencmd("compare", "nope")
    assert result.returncode == 2 and b"'nope' is not one of 'session', 'errors'" \
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


def test_compare_html_to_an_unwritable_place_is_one_sentence(tmp_path):
    result = run_greencmd("compare", "--html", str(tmp_path / "no" / "such" / "page.html"))
    assert result.returncode == 2
    assert b"cannot write" in result.stderr and b"Traceback" not in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless Chromium with no network of its own, as this machine needs."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--user-data-dir=%s" % profile, *args],
        capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The HTML page, what Chromium made of it (its DOM), and a screenshot for a person."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    folder = tmp_path_factory.mktemp("compare-html")
    page = folder / "compare.html"
    result = run_greencmd("compare", "--html", str(page))
    assert result.returncode == 0, result.stderr
    dom = chromium("--dump-dom", page.as_uri(), profile=folder / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = chromium("--screenshot=%s" % (folder / "compare.png"), "--window-size=1600,2400",
                    page.as_uri(), profile=folder / "profile2")
    assert shot.returncode == 0, shot.stderr[-2000:]
    return page.read_text(), dom.stdout.decode(), folder / "compare.png"


def test_html_page_is_self_contained(rendered):
    source, _dom, _shot = rendered
    assert not re.search(r"(src|href)=\"(https?:|//)", source)
    assert "<link" not in source and "<script" not in source and "@import" not in source


def test_chromium_renders_every_pair_with_its_sides_and_counts(rendered):
    _source, dom, shot = rendered
    assert shot.stat().st_size > 10000  # a real picture, kept beside the page for a person
    for pair in PAIRS:
        assert 'id="%s"' % pair.name in dom
        assert 'href="#%s"' % pair.name in dom  # the table of contents
    sections = re.findall(r'<section id="([^"]+)">(.*?)</section>', dom, re.S)
    assert len(sections) == len(PAIRS)
    for name, body in sections:
        pair = find_pair(name)
        engines = re.findall(r'<div class="side" data-engine="([^"]+)">', body)
        assert engines == [side.engine for side in pair.sides]
        counts = [int(n) for n in re.findall(r'<span class="count">\((\d+) lines\)', body)]
        assert counts == [line_count(side) for side in pair.sides]
        assert ('class="cost"' in body) == bool(pair.cost)
    # Pygments' highlighting made it through: keywords are in spans of their class.
    assert '<span class="k">def</span>' in dom or '<span class="kd">def</span>' in dom


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
    return subprocess.run([sys.executable, "-m", "greencmd.tools.compare.getpage",
                           "--engine", engine,
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
    result = subprocess.run([sys.executable, "-m", "greencmd.tools.compare.getpage", "lower"],
                            env=greencmd_env(), capture_output=True, timeout=60)
    assert result.returncode == 0 and b"hello from the getpage lesson" in result.stdout


def test_docs_compare_gives_each_pairs_line_counts_as_they_are():
    from conftest import REPO

    text = (REPO / "docs" / "compare.md").read_text()
    for pair in PAIRS:
        counts = " / ".join(str(line_count(side)) for side in pair.sides)
        assert "| %s | %s |" % (pair.name, counts) in text, pair.name
