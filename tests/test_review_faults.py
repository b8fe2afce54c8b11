"""Faults found in review: each test failed on the code before its fix."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import greencmd_env, read_until, reset, wait_until

BYE = b"Server shutting down, bye!\n"


def test_shutdown_with_a_client_that_never_reads_exits_0_and_never_cuts_a_reply(
        start_server, tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(b"".join(b"%06d %s\n" % (i, b"x" * 3000) for i in range(1000)))
    server = start_server("--grace", "0.5", "--lastlog-file", str(big))
    with server.connect() as sock:
        sock.sendall(b"lastlog 1000\n" * 6)  # 18 MB of replies: more than socket buffers hold
        time.sleep(1.5)  # the replies fill the socket buffers; nobody reads
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10
        sock.settimeout(10)
        received = b""
        try:
            received = read_until(sock, b"\x00never")
        except OSError:
            pass  # cut off: allowed, as long as nothing follows a cut reply
    assert server.count_log("Main loop terminated.") == 1
    assert not any("Traceback" in line for line in server.lines)
    if BYE in received:
        # The bye only ever follows a whole reply, at the start of a line.
        assert received.endswith(b"End lastlog\n" + BYE), received[-200:]
    for line in received.split(b"\n")[:-1]:
        assert line.startswith((b"Begin", b"End", b"0")) or line + b"\n" == BYE, line[-80:]


def test_a_follow_with_a_backlog_over_64_kib_still_stops(start_server, tmp_path):
    source = tmp_path / "wide.log"
    source.write_bytes(b"".join(b"%04d %s\n" % (i, b"y" * 4000) for i in range(40)))
    server = start_server("--lastlog-file", str(source))
    with server.connect(timeout=20) as sock:
        sock.sendall(b"follow 20\n")
        data = read_until(sock, b"0039 " + b"y" * 4000 + b"\n")
        assert data.startswith(b"Begin follow\n0020 ")
        sock.sendall(b"\nhelp\n")
        rest = read_until(sock, b"quit\n")
    assert rest.startswith(b"End follow\nCommands: ")
    wait_until(lambda: not server.children(), 10, "tail reaped")


FAST_SUBPROCESS_CHECKS = r'''
import json, sys, time
import gevent
variant = sys.argv[1]
if variant == "gevent":
    from gevent.subprocess import PIPE, Popen, TimeoutExpired
else:
    from greencmd.gevent_engine.fast_subprocess import PIPE, Popen, TimeoutExpired
out = {}
p = Popen(["sleep", "5"], stdout=PIPE)
started = time.monotonic()
with gevent.Timeout(0.2, False):
    p.wait()
out["outer_false"] = [round(time.monotonic() - started, 1), p.returncode]
try:
    with gevent.Timeout(0.2):
        p.wait()
    out["outer_raises"] = "nothing"
except gevent.Timeout:
    out["outer_raises"] = "Timeout"
except TimeoutExpired:
    out["outer_raises"] = "TimeoutExpired"
try:
    p.wait(timeout=0.1)
    out["own"] = "nothing"
except TimeoutExpired as exc:
    out["own"] = exc.timeout
p.kill()
out["killed"] = p.wait()
q = Popen(["printf", "hi"], stdout=PIPE)
out["read"] = q.stdout.read().decode()
out["status"] = q.wait()
print(json.dumps(out))
'''


def subprocess_checks(variant: str) -> dict:
    result = subprocess.run([sys.executable, "-c", FAST_SUBPROCESS_CHECKS, variant],
                            env=greencmd_env(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_fast_subprocess_behaves_as_gevent_subprocess():
    theirs, ours = subprocess_checks("gevent"), subprocess_checks("fast")
    assert theirs == {"outer_false": [0.2, None], "outer_raises": "Timeout", "own": 0.1,
                      "killed": -9, "read": "hi", "status": 0}
    assert ours == theirs


SECOND_KILL = r'''
import os, sys, gevent
from greencmd.gevent_engine import processes
worker = gevent.spawn(processes.run, ["sleep", "30"], 60, 1000)
gevent.sleep(0.3)
worker.kill(KeyError, block=False)
for _ in range(6):  # a second kill lands while the first one's cleanup waits
    gevent.sleep(0)
    worker.kill(KeyError, block=False)
worker.join()
gevent.sleep(0.5)
left = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open("/proc/%s/stat" % entry).read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == os.getpid():
            left.append(stat.split()[2])
print(" ".join(left) or "none")
'''


def test_a_second_kill_during_cleanup_still_reaps_the_child():
    result = subprocess.run([sys.executable, "-c", SECOND_KILL], env=greencmd_env(),
                            capture_output=True, timeout=60)
    assert result.stdout == b"none\n", (result.stdout, result.stderr[-2000:])


REAPED_FIRST = r'''
import asyncio, sys, time
from greencmd.asyncio_engine import processes

async def main():
    child = await processes.start(["sh", "-c", "sleep %s & sleep 0.3" % sys.argv[1]])
    # The loop is busy while the child exits: asyncio's watcher thread reaps it, and
    # its callback (which sets the return code) waits for the loop.
    time.sleep(1)
    assert child.returncode is None
    started = time.monotonic()
    # Awaited in this task (no task of its own, which would let the callback run first).
    give_up = asyncio.get_running_loop().call_later(5, asyncio.current_task().cancel)
    try:
        await processes.exited(child)
        print("exited after %.1f s" % (time.monotonic() - started))
    except asyncio.CancelledError:
        print("still waiting after 5 s")
    finally:
        give_up.cancel()
        processes.kill_group(child)  # the sleep that holds the pipes

asyncio.run(main())
'''


def test_asyncio_sees_the_exit_of_a_child_its_watcher_reaped_first():
    # Found as a rare CI failure: the grandchild test timed out on asyncio when
    # pidfd_open() came after the reap and the fallback waited for the pipes.
    result = subprocess.run([sys.executable, "-c", REAPED_FIRST, "47.5"], env=greencmd_env(),
                            capture_output=True, timeout=60)
    assert result.stdout == b"exited after 0.0 s\n", (result.stdout, result.stderr[-2000:])


WATCHER_WOKEN_AFTER_HANG_UP = r'''
import os, socket as stdsock, struct, time
import gevent
from gevent import socket
from gevent.socket import wait_read
from greencmd.gevent_engine.session import kill_on_reset
listener = socket.create_server(("127.0.0.1", 0))
failed = 0
for _ in range(20):
    client = stdsock.create_connection(listener.getsockname())
    sock, _ = listener.accept()
    wake_r, wake_w = os.pipe()

    def session() -> None:
        wait_read(wake_r)  # the command ends in the loop turn that sees the reset
        watcher.kill(block=False)  # as Session.run_command's finally
        sock.close()  # as the hang-up after a reply the reset client cannot take

    session_greenlet = gevent.spawn(session)
    watcher = gevent.spawn(kill_on_reset, sock, session_greenlet)
    gevent.sleep(0.01)  # both wait
    client.setsockopt(stdsock.SOL_SOCKET, stdsock.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    os.write(wake_w, b"x")
    time.sleep(0.01)  # both events there before the loop looks
    gevent.joinall([session_greenlet, watcher], timeout=5)
    ended_quietly = isinstance(watcher.exception, (type(None), gevent.GreenletExit))
    failed += not (watcher.dead and ended_quietly)
    os.close(wake_r)
    os.close(wake_w)
print(failed)
'''


def test_a_reset_watcher_woken_after_the_session_hung_up_ends_quietly():
    # Found by a soak of mixed abuse: a client resets as its command ends; the
    # session hangs up before its non-blocking kill of the watcher comes round, and
    # the watcher, woken in the same loop turn, peeked a closed socket: ValueError,
    # and a traceback on the server's stderr (31 in 40 seconds).
    result = subprocess.run([sys.executable, "-c", WATCHER_WOKEN_AFTER_HANG_UP],
                            env=greencmd_env(), capture_output=True, timeout=60)
    assert (result.stdout, result.stderr) == (b"0\n", b"")


@pytest.mark.engines("gevent", "twisted")
def test_a_reset_storm_of_lastlogs_does_not_starve_a_polite_client(start_server, tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))
    # Enough slots that the polite client is never refused: the point is how long it waits.
    server = start_server("--max-clients", "1000", "--lastlog-file", str(big))
    for _ in range(3):
        socks = []
        for _ in range(100):
            sock = server.connect()
            sock.sendall(b"lastlog 1000\n")
            socks.append(sock)
        for sock in socks:
            reset(sock)
    assert server.talk(b"help\n", timeout=20).startswith(b"Commands:")
    wait_until(lambda: not server.children(), 20, "every tail reaped")
    assert server.stop(signal.SIGTERM) == 0
