"""``--audit-log FILE``: who asked what, one JSON line per request, for every engine.

Each line: ``time``, ``peer``, ``session``, ``command``, ``arg_bytes`` (the length of
the argument; never given for ``auth``), ``reply`` (``ok``, ``error`` or ``refused``)
and ``seconds`` (how long the answer took). A full disk (or any failed write) never
fails a session: the first failure is one line in the server log saying that
requests are not being recorded, and the first success after it says how many were lost.
SIGHUP reopens the file, as it does the server log (after logrotate moved it).
"""

from __future__ import annotations

import json
import os
import time

from . import protocol
from .errors import describe_os_error
from .logs import log, reopen_on_sighup

__all__ = ["AuditLog", "reply_kind"]

#: Replies that say the request was not served at all.
REFUSED = (protocol.AUTH_FAILED, protocol.AUTH_REQUIRED, protocol.TOO_MANY,
           protocol.LINE_TOO_LONG)


def reply_kind(reply: bytes) -> str:
    """``ok``, ``error`` or ``refused``, from the reply's first line."""
    if reply.startswith(REFUSED):
        return "refused"
    return "error" if protocol.is_error_reply(reply) else "ok"


class AuditLog:
    """Appends one JSON line per request to a file; see the module's docstring."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = _open(path)
        self.lost = 0
        reopen_on_sighup(self.reopen)

    def record(self, system: str, request: protocol.Request, reply: bytes,
               started: float) -> None:
        """Write the line for one answered request; never raises."""
        _, number, peer = system.split(",", 2)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "peer": peer,
                 "session": int(number), "command": protocol.printable(request.word)}
        if request.word != b"auth":
            entry["arg_bytes"] = len(request.arg)
        entry.update(reply=reply_kind(reply), seconds=round(time.monotonic() - started, 6))
        line = (json.dumps(entry) + "\n").encode()
        try:
            os.write(self.fd, line)
        except OSError as exc:
            if not self.lost:
                log("Audit log %s: cannot write (%s); requests are not being recorded"
                    % (self.path, describe_os_error(exc)), event="audit_failed", level="error")
            self.lost += 1
            return
        if self.lost:
            log("Audit log %s: writing again; %d requests were not recorded"
                % (self.path, self.lost), event="audit_resumed", level="warning")
            self.lost = 0

    def reopen(self) -> bool:
        """Open the file again (it may have been moved); False, and one log line, if it
        cannot be: lines go on to the file it had."""
        try:
            fd = _open(self.path)
        except OSError as exc:
            log("Cannot reopen the audit log %s: %s; it goes on writing where it did"
                % (self.path, describe_os_error(exc)), event="audit_failed", level="error")
            return False
        os.close(self.fd)
        self.fd = fd
        return True

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


def _open(path: str) -> int:
    # O_APPEND: lines from several --workers processes never overwrite each other.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
