"""``greencmd compare --html FILE``: the pairs as one self-contained page.

Syntax highlighted with Pygments, each side in a column of its own, the pair
list as a table of contents, each pair's cost line and line counts. Styles are
inlined: the page needs no network and no other file to display.
"""

from __future__ import annotations

import html

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from ... import __version__
from .pairs import Pair, Side, line_count, source_of

__all__ = ["page", "write_page"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
nav table { border-collapse: collapse; margin-bottom: 2em; }
nav td, nav th { padding: 0.15em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
section { margin: 2.5em 0; }
h2 { border-bottom: 2px solid #888; padding-bottom: 0.2em; }
p.cost { background: #fff4e0; border-left: 4px solid #e0a030; padding: 0.4em 0.8em; }
.sides { display: grid; gap: 1em; align-items: start; }
.side h3 { font-size: 0.95em; margin: 0 0 0.3em 0; }
.side .highlight pre { margin: 0; padding: 0.6em; font-size: 0.82em; overflow-x: auto;
                       border: 1px solid #ddd; background: #fafafa; }
"""


def _side(side: Side, formatter: HtmlFormatter) -> str:
    code = highlight("\n".join(source_of(side)) + "\n", PythonLexer(), formatter)
    return ('<div class="side" data-engine="%s"><h3>%s: <code>%s</code> '
            '<span class="count">(%d lines)</span></h3>%s</div>'
            % (html.escape(side.engine), html.escape(side.engine), html.escape(side.where),
               line_count(side), code))


def _section(pair: Pair, formatter: HtmlFormatter) -> str:
    cost = '<p class="cost">%s</p>' % html.escape(pair.cost) if pair.cost else ""
    columns = "grid-template-columns: repeat(%d, minmax(0, 1fr));" % len(pair.sides)
    return ('<section id="%s"><h2>%s</h2><p class="what">%s</p>%s'
            '<div class="sides" style="%s">%s</div></section>'
            % (pair.name, html.escape(pair.name), html.escape(pair.what), cost, columns,
               "".join(_side(side, formatter) for side in pair.sides)))


def _contents(pairs: list[Pair]) -> str:
    engines = [side.engine for side in pairs[0].sides] if pairs else []
    head = "".join("<th>%s lines</th>" % html.escape(e) for e in engines)
    rows = "".join(
        '<tr><td><a href="#%s">%s</a></td><td>%s</td>%s</tr>'
        % (pair.name, html.escape(pair.name), html.escape(pair.what),
           "".join("<td>%d</td>" % line_count(side) for side in pair.sides))
        for pair in pairs)
    return "<nav><table><tr><th>pair</th><th>what</th>%s</tr>%s</table></nav>" % (head, rows)


def page(pairs: list[Pair]) -> str:
    """The whole HTML page for ``pairs``."""
    formatter = HtmlFormatter(style="default")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>greencmd %s: the engines side by side</title><style>%s%s</style></head>"
            "<body><h1>greencmd: the same server in each style</h1>%s%s</body></html>\n"
            % (__version__, _STYLE, formatter.get_style_defs(".highlight"), _contents(pairs),
               "".join(_section(pair, formatter) for pair in pairs)))


def write_page(pairs: list[Pair], path: str) -> None:
    """Write :func:`page` to ``path``; raises OSError."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page(pairs))
