"""``greencmd compare`` in a terminal: the sides next to each other when they fit, else stacked.

Nothing is ever cut or folded: side by side needs every side's longest line to
fit the width; otherwise each side is shown whole, one above the other, and a
line longer than the terminal wraps as the terminal wraps it.
"""

from __future__ import annotations

import itertools
import textwrap

from .pairs import Pair, Side, line_count, source_of

__all__ = ["render_pair", "GUTTER"]

#: What separates two columns.
GUTTER = " | "


def _heading(side: Side) -> str:
    return "%s: %s (%d lines)" % (side.engine, side.where, line_count(side))


def _title(pair: Pair, width: int) -> list[str]:
    lines = textwrap.wrap("[%s] %s" % (pair.name, pair.what), width)
    if pair.cost:
        lines += textwrap.wrap("Cost: " + pair.cost, width)
    return lines


def render_pair(pair: Pair, width: int) -> str:
    """The pair for a terminal ``width`` columns wide."""
    columns = [[_heading(side), ""] + source_of(side) for side in pair.sides]
    widths = [max(len(line.expandtabs()) for line in column) for column in columns]
    side_by_side = sum(widths) + len(GUTTER) * (len(widths) - 1) <= width
    rule = "=" * (min(width, sum(widths) + len(GUTTER) * (len(widths) - 1))
                  if side_by_side else width)
    out = [rule, *_title(pair, len(rule)), rule]
    if side_by_side:
        for row in itertools.zip_longest(*columns, fillvalue=""):
            cells = ["%-*s" % (w, cell) for w, cell in zip(widths, row, strict=True)]
            out.append(GUTTER.join(cells).rstrip())
    else:
        for index, column in enumerate(columns):
            if index:
                out += ["", "-" * min(width, max(widths))]
            out += column
    return "\n".join(out)
