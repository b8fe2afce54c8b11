"""The protocol module on its own: framing and parsing need no socket."""

import tracemalloc

import pytest

from greencmd.core import logtail, protocol
from greencmd.core.logtail import LastlogSource
from greencmd.core.protocol import LineBuffer, Request, parse_request
from greencmd.gevent_engine.commands import BUILTINS


def follow_start(arg: bytes, source) -> logtail.FollowStart:
    """The follow's start as an engine makes it: the count, then the backlog."""
    count = logtail.follow_count(arg, LastlogSource(str(source), (str(source),)))
    start = logtail.follow_start(str(source), count)
    if isinstance(start, bytes):
        raise protocol.Refused(start)
    return start


def feed_bytewise(buffer: LineBuffer, data: bytes) -> list[bytes]:
    lines = []
    for i in range(len(data)):
        lines += buffer.feed(data[i:i + 1])
    return lines


def test_lines_split_whole_and_byte_by_byte():
    data = b"help\r\nlastlog 5\ncomhash a b \r\n\n"
    expected = [b"help", b"lastlog 5", b"comhash a b ", b""]
    assert LineBuffer().feed(data) == expected
    assert feed_bytewise(LineBuffer(), data) == expected


def test_only_one_cr_before_lf_is_dropped():
    assert LineBuffer().feed(b"a\r\r\nb\rc\n") == [b"a\r", b"b\rc"]


def test_unterminated_last_line_counts_at_eof():
    buffer = LineBuffer()
    assert buffer.feed(b"help\nlast") == [b"help"]
    assert buffer.finish() == [b"last"]
    assert buffer.finish() == []


def test_line_of_exactly_max_line_is_accepted_with_or_without_cr():
    assert LineBuffer(4).feed(b"abcd\n") == [b"abcd"]
    assert feed_bytewise(LineBuffer(4), b"abcd\r\n") == [b"abcd"]
    buffer = LineBuffer(4)
    assert buffer.feed(b"abcd\r") == [] and not buffer.too_long


def test_line_over_max_line_stops_the_stream_after_earlier_lines():
    buffer = LineBuffer(4)
    assert buffer.feed(b"ok\nabcde\nhelp\n") == [b"ok"]
    assert buffer.too_long
    assert buffer.feed(b"help\n") == [] and buffer.finish() == []


def test_unfinished_line_over_the_limit_is_caught_before_its_lf():
    buffer = LineBuffer(8)
    assert buffer.feed(b"x" * 9) == []
    assert not buffer.too_long  # may still be 8 bytes and a CR
    buffer.feed(b"x")
    assert buffer.too_long


def test_buffer_never_holds_more_than_about_one_line():
    buffer = LineBuffer(100)
    for _ in range(1000):
        buffer.feed(b"y" * 50)
        if buffer.too_long:
            break
    assert buffer.too_long
    assert len(buffer.pending) == 0


def test_unterminated_last_line_loses_a_final_cr_before_it_is_measured():
    buffer = LineBuffer(4)
    assert buffer.feed(b"abcd\r") == []
    assert buffer.finish() == [b"abcd"]


def test_unterminated_line_over_the_limit_at_eof():
    buffer = LineBuffer(3)
    assert buffer.feed(b"abcd") == []
    assert buffer.finish() == [] and buffer.too_long


@pytest.mark.parametrize("line, expected", [
    (b"", None), (b"   ", None), (b" \t ", None),
    (b"help", Request(b"help", b"")),
    (b"LastLog 5", Request(b"lastlog", b"5")),
    (b"  comhash   /a dir/my file  ", Request(b"comhash", b"/a dir/my file")),
    (b"\xff\xfe x", Request(b"\xff\xfe", b"x")),
])
def test_parse_request(line, expected):
    assert parse_request(line) == expected


def http_by_the_whole_line(line: bytes) -> str | None:
    """The HTTP rule read straight from docs/protocol.md: a Host header, or a whole
    request line (method, target, version), with no shortcut."""
    word = line.split()[0].lower()
    if word.startswith(b"host:") or protocol._HTTP_REQUEST.fullmatch(line.strip()):
        return "HTTP"
    return None


@pytest.mark.parametrize("line, expected", [
    (b"GET / HTTP/1.1", "HTTP"), (b"  post /x?a=b HTTP/1.0  ", "HTTP"),
    (b"OPTIONS * HTTP/2", "HTTP"), (b"exit / HTTP/1.1", "HTTP"), (b"M-SEARCH * HTTP/1.1", "HTTP"),
    (b"Host: example.com", "HTTP"), (b"HOST:example.com:80", "HTTP"),
    (b"exit", None), (b"GET", None), (b"GET /", None), (b"HTTP/1.1", None),
    (b"comhash /srv/HTTP/1.1", None), (b"get / http/1.1", None), (b"GET\t/\tHTTP/1.1", None),
    (b"GET / HTTP/1.1 x", None), (b"hosted", None), (b"lastlog 5", None), (b"\xff HTTP/1", None),
])
def test_other_protocol_sees_http_as_the_whole_line_rule_does(line, expected):
    # The engines' check looks at the argument first; it must answer as the rule does.
    assert http_by_the_whole_line(line) == expected
    assert protocol.other_protocol(parse_request(line), line) == expected


@pytest.mark.parametrize("arg, count", [(b"", 10), (b"1", 1), (b"1000", 1000), (b"010", 10),
                                        (b"0" * 5000 + b"7", 7)])
def test_lastlog_count_accepted(arg, count):
    assert protocol.parse_lastlog_count(arg) == count


@pytest.mark.parametrize("arg", [b"0", b"1001", b"-1", b"+5", b"x", b"5 6", b"\xd9\xa5",
                                 b"99999999999999999999999", b"9" * 5000, b"0" * 5000])
def test_lastlog_count_refused(arg):
    with pytest.raises(ValueError, match="from 1 to 1000"):
        protocol.parse_lastlog_count(arg)


@pytest.mark.parametrize("output", [
    b"", b"a", b"a\n", b"a\n\n", b"\n", b"a\nb", b"a\r\nb\r\n", b"==> f <==", b"==\n",
    b"a\n==> f <==\nb\n", b"a==b\n", b"a\n =x\n", b"\n==\n", b"x\n" * 1000 + b"==y"])
def test_log_lines_ends_every_line_with_lf_and_drops_only_header_lines(output):
    lines = output.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    expected = b"".join(line + b"\n" for line in lines if not line.startswith(b"=="))
    assert protocol.log_lines(output) == expected


def test_lastlog_reply_frames_and_drops_header_lines():
    assert protocol.lastlog_reply(b"a\n==> f <==\nb") == b"Begin lastlog\na\nb\nEnd lastlog\n"
    assert protocol.lastlog_reply(b"") == b"Begin lastlog\nEnd lastlog\n"


def test_error_reply_is_one_line_and_keeps_path_bytes():
    assert protocol.error("x\ny") == b"An error occured: x y\n"
    path = b"/tmp/\xff"
    assert protocol.error(protocol.decode_path(path)) == b"An error occured: /tmp/\xff\n"


def test_help_lists_every_command_the_dispatch_table_has():
    assert protocol.HELP == (b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, "
                             b"exit, quit\n")
    assert protocol.help_reply(["uptime"], auth=True) == (
        b"Commands: lastlog [N], follow [N], comhash PATH, stats, help, exit, quit, "
        b"auth TOKEN, uptime\n")
    # follow streams and exit hangs up: the session handles those two itself.
    assert set(BUILTINS) | {b"exit", b"follow"} == set(protocol.COMMAND_SYNTAX)


@pytest.mark.parametrize("data, text", [
    (b"hello server", "hello server"),
    (b"a\x1bb\x00c\td", "a\\x1bb\\x00c\\x09d"),
    (b"\xff\xfe", "\\xff\\xfe"),
    ("é\u2028".encode(), "é\\u2028"),
])
def test_printable_escapes_what_a_terminal_would_act_on(data, text):
    assert protocol.printable(data) == text


def test_error_replies_are_recognised():
    for reply in (protocol.COMMAND_NOT_FOUND, protocol.NO_PATH, protocol.LINE_TOO_LONG,
                  protocol.TOO_MANY, protocol.SHUTTING_DOWN, protocol.IDLE_TIMEOUT,
                  protocol.error("x")):
        assert protocol.is_error_reply(reply)
    assert not protocol.is_error_reply(protocol.HELP)
    assert not protocol.is_error_reply(protocol.hash_reply("0" * 40))


def scan(data: bytes, byte_at_a_time: bool = False) -> protocol.ReplyScanner:
    scanner = protocol.ReplyScanner()
    for piece in ([data[i:i + 1] for i in range(len(data))] if byte_at_a_time else [data]):
        scanner.feed(piece)
    return scanner


@pytest.mark.parametrize("byte_at_a_time", [False, True])
@pytest.mark.parametrize("stream, failed", [
    (b"Commands: lastlog [N], comhash PATH, help, exit\n", False),
    (b"Commands: x\nCommand not found.\n", True),
    (b"File hash is : abc\nAn error occured: [Errno 2] nope\n", True),
    (b"please provide a path.\nCommands: x\n", True),
    (b"Server shutting down, bye!\n", True),
    # A log line inside a lastlog body that reads like an error is not one.
    (b"Begin lastlog\nAn error occured: quoted\nCommand not found.\nEnd lastlog\n", False),
    (b"Begin lastlog\nx\nEnd lastlog\nLine too long.\n", True),
    (b"", False),
])
def test_reply_scanner_finds_error_replies_anywhere_in_the_stream(stream, failed, byte_at_a_time):
    scanner = scan(stream, byte_at_a_time)
    assert (scanner.failed, scanner.received) == (failed, bool(stream))


@pytest.mark.parametrize("byte_at_a_time", [False, True])
@pytest.mark.parametrize("stream, cut", [
    (b"", False),
    (b"Commands: x\n", False),
    (b"Begin lastlog\nx\nEnd lastlog\n", False),
    (b"Begin follow\nold\nEnd follow\nServer shutting down, bye!\n", False),
    (b"Commands: x", True),  # a line without its newline
    (b"Begin lastlog\nx\n", True),  # a frame without its End
    (b"Begin lastlog\nx\nEnd lastlog", True),
    (b"Begin lastlog\nEnd follow\n", True),  # another frame's End does not close it
])
def test_reply_scanner_knows_a_stream_cut_inside_a_reply(stream, cut, byte_at_a_time):
    assert scan(stream, byte_at_a_time).cut == cut


def test_reply_scanner_keeps_little_of_a_line_that_never_ends():
    # A broken server's endless line: the client prints it as it comes, and its
    # scanner must not hold it (20 MiB fed here, in the pieces a recv gives).
    scanner = protocol.ReplyScanner()
    piece = b"y" * 65536
    tracemalloc.start()
    try:
        for _ in range(320):
            scanner.feed(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert scanner.cut and not scanner.failed
    scanner.feed(b"\nAn error occured: after the long line\n")
    assert scanner.failed and not scanner.cut


def feed_all(pieces: list[bytes]) -> bytes:
    lines = protocol.FollowLines()
    return b"".join(lines.feed(piece) for piece in pieces) + lines.finish()


@pytest.mark.parametrize("pieces, sent", [
    ([b"a\nb\n"], b"a\nb\n"),
    ([b"a", b"b\nc", b"\n"], b"ab\nc\n"),
    ([b"==> x <==\nkept\n"], b"kept\n"),
    ([b"=", b"= split header\nkept\n"], b"kept\n"),
    ([b"unfinished"], b"unfinished\n"),
    ([b""], b""),
])
def test_follow_lines_are_whole_and_leave_out_header_lines(pieces, sent):
    assert feed_all(pieces) == sent


def test_follow_lines_pass_on_a_giant_line_without_holding_it():
    lines = protocol.FollowLines()
    big = b"x" * (protocol.FollowLines.HOLD + 10)
    assert lines.feed(big) == big  # passed on at once, not held
    assert lines.feed(b"yy") == b"yy"
    assert lines.feed(b"z\nnext\n") == b"z\nnext\n"
    header = b"==" + big
    assert lines.feed(header) == b""  # a giant header line is dropped whole
    assert lines.feed(b"more\nafter\n") == b"after\n"
    assert lines.finish() == b""


def test_follow_start_reads_whole_lines_and_starts_tail_after_them(tmp_path):
    source = tmp_path / "log"
    source.write_bytes(b"1\n2\n==> h <==\n3\nhalf")
    start = follow_start(b"2", source)
    assert start.backlog == b"3\n"  # tail counts the header line, follow leaves it out
    assert start.argv == [logtail.TAIL, "-c", "+%d" % (len(b"1\n2\n==> h <==\n3\n") + 1), "-F",
                          "--", str(source)]
    everything = follow_start(b"1000", source)
    assert everything.backlog == b"1\n2\n3\n"


def test_follow_start_of_a_long_file_reads_only_its_end(tmp_path):
    source = tmp_path / "log"
    source.write_bytes(b"".join(b"line %d\n" % i for i in range(200000)))
    start = follow_start(b"3", source)
    assert start.backlog == b"line 199997\nline 199998\nline 199999\n"
    assert start.argv[2] == "+%d" % (source.stat().st_size + 1)


@pytest.mark.parametrize("content", [b"", b"no newline at all"])
def test_follow_start_of_a_file_without_whole_lines(tmp_path, content):
    source = tmp_path / "log"
    source.write_bytes(content)
    start = follow_start(b"", source)
    assert start.backlog == b""
    assert start.argv[2] == "+1"


def test_follow_start_refuses_a_backlog_over_the_limit(tmp_path):
    source = tmp_path / "log"
    source.write_bytes((b"w" * 8191 + b"\n") * 1000)
    with pytest.raises(protocol.Refused) as refused:
        follow_start(b"1000", source)
    assert refused.value.reply.startswith(b"An error occured: follow of '%s': the last 1000 "
                                          b"lines are over 4 MiB" % bytes(source))
