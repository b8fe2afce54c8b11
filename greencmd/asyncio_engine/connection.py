"""A client connection as the asyncio session sees it: request lines in, replies out.

``read_line()`` awaits a whole line, with the idle timeout as one deadline for
the whole line (bytes that trickle in without a line feed do not restart it);
``write()`` hands a reply to the transport at once, so a reply is always whole
in its buffer, and ``flush()`` awaits ``drain()`` before the session waits for
the client again, which bounds what a client that never reads can pile up.
Compare ``gevent_engine/connection.py``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import TypeVar

from ..core import protocol
from ..core.logs import IDLE, RESET
from ..core.settings import LINGER_BYTES, LINGER_SECONDS, RECV_SIZE

__all__ = ["Connection", "LineTooLong", "IdleTimeout", "ClientGone", "OtherProtocol",
           "within"]


class LineTooLong(Exception):
    """The client sent a line longer than ``--max-line``."""


class IdleTimeout(BaseException):
    """The client sent no complete line within ``--idle-timeout``.

    A ``BaseException``, as in the gevent engine: no ``except Exception`` on the way
    (a plugin's, or the one that turns a command's bug into an error line) stops it.
    """


class OtherProtocol(Exception):
    """The client speaks another protocol (``name``: HTTP, TLS); end at once, no reply."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class ClientGone(BaseException):
    """The client reset, or left a reply unread; ``reason`` says which for the log.

    A ``BaseException``, as in the gevent engine (see :class:`IdleTimeout`).
    """

    def __init__(self, reason: str = RESET) -> None:
        super().__init__(reason)
        self.reason = reason


class Connection:
    """Lines from a client stream, replies to it; see the module's docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_line: int, idle_timeout: float) -> None:
        self.reader, self.writer = reader, writer
        self.idle_timeout = idle_timeout or None  # 0 disables it: wait for ever
        self.lines: collections.deque[bytes] = collections.deque()
        self.buffer = protocol.LineBuffer(max_line)
        self.eof = False
        self.first_read = True  # nothing received yet: the first bytes are checked
        #: True while ``read_line`` waits for the client's next request.
        self.waiting = False

    async def read_line(self) -> bytes | None:
        """The next request line, without its line end; ``None`` once the client closed."""
        if not self.lines:
            await self.flush()
        self.waiting = True
        try:
            return await self.next_line(self.idle_timeout)
        finally:
            self.waiting = False

    async def next_line(self, idle: float | None = None) -> bytes | None:
        """The next line the client sends (``None`` at EOF); IdleTimeout after ``idle`` s."""
        deadline = None if idle is None else asyncio.get_running_loop().time() + idle
        while not self.lines:
            if self.buffer.too_long:
                raise LineTooLong()
            if self.eof:
                return None
            await self.receive(deadline)
        return self.lines.popleft()

    async def receive(self, deadline: float | None = None) -> None:
        """Read what the client sent into the line buffer; ClientGone on a reset."""
        try:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            data = await within(left, self.reader.read(RECV_SIZE))
        except asyncio.TimeoutError:
            raise IdleTimeout() from None
        except OSError as exc:
            raise ClientGone() from exc
        if self.first_read and data:
            self.first_read = False
            suspect = protocol.other_protocol_start(data)
            if suspect:
                raise OtherProtocol(suspect)
        self.eof = not data
        self.lines.extend(self.buffer.feed(data) if data else self.buffer.finish())

    def write(self, reply: bytes) -> None:
        """Hand ``reply`` to the transport; it is whole in its buffer from now on.

        ClientGone once the connection is lost: asyncio drops what is written
        after that, and logs a warning for each write past the fifth (a client that
        pipelined 100,000 lines and reset made as many log lines).
        """
        if self.writer.is_closing():  # only hang_up closes it: the connection was lost
            raise ClientGone()
        self.writer.write(reply)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the client took its replies (below the buffer's high-water mark).

        ``timeout`` (default: the idle timeout) is how long it may take: then ClientGone.
        """
        try:
            await within(timeout or self.idle_timeout, self.writer.drain())
        except asyncio.TimeoutError:
            raise ClientGone(IDLE) from None
        except OSError as exc:
            raise ClientGone() from exc

    async def hang_up(self, goodbye: bytes | None) -> None:
        """Send ``goodbye`` after the replies owed, and let the client go; never raises.

        ``goodbye`` None: the client is gone. b"": a clean end. A last line, or input
        left unread, is followed by a lingering close so the replies survive.
        """
        writer = self.writer
        try:
            if goodbye is None:
                return
            if goodbye:
                writer.write(goodbye)
            await self.flush(LINGER_SECONDS)
            if writer.get_extra_info("ssl_object") is None and (
                    goodbye or self.lines or self.reader._buffer):  # noqa: SLF001
                await linger(self.reader, writer)
        except (ClientGone, OSError):
            pass
        finally:
            writer.close()
            try:
                await within(LINGER_SECONDS, writer.wait_closed())
            except (OSError, asyncio.TimeoutError):
                pass


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """``await awaitable``; TimeoutError after ``seconds`` (None: no limit).

    ``asyncio.timeout`` (Python 3.11+) costs no task; ``wait_for`` makes one per
    call before Python 3.12, which would be a task per read and per reply.
    """
    if seconds is None:
        return await awaitable
    if _timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, max(seconds, 0))
    async with _timeout(max(seconds, 0)):
        return await awaitable


_timeout = getattr(asyncio, "timeout", None)
T = TypeVar("T")


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Before a close: send FIN, then read and drop what the client still sends, a while.

    Closing with unread input makes the kernel send a reset, which can destroy the
    reply the client has not read yet.
    """
    if not writer.can_write_eof():
        return
    writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    dropped = 0
    while dropped < LINGER_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(RECV_SIZE), left)
        except (OSError, asyncio.TimeoutError):
            return
        if not chunk:
            return
        dropped += len(chunk)
