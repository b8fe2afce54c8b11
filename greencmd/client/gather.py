"""``greencmd client --gather``: each distinct reply once, under the hosts that gave it.

As clustershell's ``clubak -b``: a header names the hosts (folded into ranges
where their names allow: ``web[1-3,7]``, ``10.0.0.5:[9901-9903]``) and their
count, then the reply. Normal replies come first (the most common first), then
error replies, then the hosts that could not be reached, by what went wrong.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import BinaryIO

from .single import FAILED, OK, UNREACHABLE

__all__ = ["fold", "Gathered"]

_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def fold(names: Iterable[str]) -> str:
    """Names as few as can say them: ``web1, web2, web3, web7, db`` -> ``db,web[1-3,7]``."""
    numbered: dict[tuple[str, str], list[int]] = defaultdict(list)
    widths: dict[tuple[str, str], int] = defaultdict(int)  # zero-padded names: n01, n02
    plain = []
    for name in names:
        match = _LAST_NUMBER.match(name)
        if match is None:
            plain.append(name)
            continue
        prefix, digits, suffix = match.groups()
        numbered[prefix, suffix].append(int(digits))
        if digits.startswith("0") and len(digits) > 1:
            widths[prefix, suffix] = max(widths[prefix, suffix], len(digits))
    out = sorted(plain)
    for (prefix, suffix), numbers in sorted(numbered.items()):
        width = widths[prefix, suffix]
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            out.append("%s%0*d%s" % (prefix, width, numbers[0], suffix))
            continue
        out.append("%s[%s]%s" % (prefix, ",".join(_ranges(numbers, width)), suffix))
    return ",".join(out)


def _ranges(numbers: list[int], width: int) -> list[str]:
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ["%0*d" % (width, run[0]) if len(run) == 1
            else "%0*d-%0*d" % (width, run[0], width, run[-1]) for run in runs]


class Gathered:
    """Replies grouped as they come: each distinct reply kept once, under the hosts
    that gave it, for :meth:`print` at the end.

    A thousand servers that give the same 4 MiB reply cost 4 MiB here, not 4 GiB:
    a reply equal to one kept already is dropped once its host is noted.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[int, bytes, str | None], list[str]] = defaultdict(list)

    def add(self, outcome) -> None:
        """Note one server's outcome (a :class:`greencmd.client.fleet.Outcome`)."""
        self._groups[outcome.exit, outcome.reply, outcome.error].append(outcome.target.label)

    def print(self, out: BinaryIO) -> None:
        """Print every distinct reply once, under the hosts that gave it (see the module)."""
        order = {OK: 0, FAILED: 1, UNREACHABLE: 2}
        for (_status, reply, error), labels in sorted(
                self._groups.items(), key=lambda item: (order[item[0][0]], -len(item[1]))):
            header = "%s (%d)" % (fold(labels), len(labels))
            rule = b"-" * min(max(len(header), 15), 79) + b"\n"
            out.write(rule + header.encode() + b"\n" + rule)
            if reply:
                out.write(reply if reply.endswith(b"\n") else reply + b"\n")
            if error:
                out.write(b"error: " + error.encode() + b"\n")
        out.flush()
