"""The tutorial's getPage lessons, the gevent way; run either engine's from here.

Three lessons: print a page (one callback), lower-case it then print it (two
chained callbacks), and report a missing page (an errback). With gevent they
are plain stdlib code: ``monkey.patch_all()`` makes ``urllib`` cooperative. The
Twisted versions are in ``getpage_twisted.py``.

Run: ``python -m greencmd.compare.getpage [--engine gevent|twisted] LESSON [URL]``;
without a URL a small local HTTP server is started to fetch from.
"""

from __future__ import annotations

import argparse
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

from .lesson_text import page_error

__all__ = ["LESSONS", "PAGE", "page_error", "print_page", "lower_page", "missing_page", "main"]

PAGE = b"<html><body>Hello from the GETPAGE lesson</body></html>\n"


def fetch(url: str) -> bytes:
    """The page at ``url``; raises urllib.error.HTTPError for a status >= 400."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def print_page(url: str) -> None:
    """Lesson 1: get the page, print it."""
    print(fetch(url).decode())


def lower_page(url: str) -> None:
    """Lesson 2: get the page, lower-case it, print it."""
    page = fetch(url).decode()
    print(page.lower())


def missing_page(url: str) -> None:
    """Lesson 3: get a page that is not there, and say so."""
    try:
        print(fetch(url).decode())
    except urllib.error.HTTPError as exc:
        print(page_error(exc.code, exc.reason, url))


LESSONS = {"print": print_page, "lower": lower_page, "missing": missing_page}


class _DemoPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        found = self.path == "/"
        self.send_response(200 if found else 404)
        body = PAGE if found else b"no such page\n"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def demo_server() -> str:
    """Serve :data:`PAGE` at ``/`` on a free local port; return its URL."""
    server = HTTPServer(("127.0.0.1", 0), _DemoPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d/" % server.server_address[1]


def main(argv: list[str] | None = None) -> int:
    """Run one lesson with one engine; the output is the same for both."""
    parser = argparse.ArgumentParser(prog="python -m greencmd.compare.getpage")
    parser.add_argument("--engine", choices=("gevent", "twisted"), default="gevent")
    parser.add_argument("lesson", choices=sorted(LESSONS))
    parser.add_argument("url", nargs="?", help="default: a local demo server")
    args = parser.parse_args(argv)
    if args.engine == "gevent":
        from gevent import monkey

        monkey.patch_all()
    url = args.url or demo_server() + ("missing" if args.lesson == "missing" else "")
    if args.engine == "twisted":
        from ...twisted_engine import TwistedMissing, load_run

        try:
            load_run()
        except TwistedMissing as exc:
            print("getpage: %s" % exc, file=sys.stderr)
            return 2
        from .getpage_twisted import run

        return run(args.lesson, url)
    try:
        LESSONS[args.lesson](url)
    except (OSError, ValueError) as exc:
        print("getpage: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
