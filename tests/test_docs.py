"""The documentation: every relative link resolves inside the repository."""

import re

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_relative_link_resolves_inside_the_repository(page):
    links = [target.split("#")[0] for target in LINK.findall(page.read_text())
             if not target.startswith(("http://", "https://", "mailto:", "#"))]
    for link in links:
        path = (page.parent / link).resolve()
        assert path.is_relative_to(REPO) and path.exists(), "%s: %s" % (page.name, link)


def test_the_readme_links_the_protocol_and_command_line_pages():
    text = (REPO / "README.md").read_text()
    assert "(docs/protocol.md)" in text and "(docs/cli.md)" in text


def test_nothing_points_outside_the_repository():
    for path in [*DOCS, *sorted((REPO / "greencmd").rglob("*.py"))]:
        assert "shared/spec" not in path.read_text(), path
