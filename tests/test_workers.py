"""serve --workers N: processes sharing one port, supervised."""

import os
import re
import signal
import socket
import threading

import pytest
from conftest import (
    HELP,
    Server,
    connections_that_fit,
    free_port,
    greencmd_env,
    read_all,
    read_until,
    run_greencmd,
    stopped,
    wait_until,
)

#: The twin has no --workers; every other engine runs each test here.
pytestmark = pytest.mark.engines("gevent", "asyncio")


@pytest.fixture
def workers(tmp_path, engine):
    server = Server(["--engine", engine, "--port", "0", "--workers", "2",
                     "--log-file", str(tmp_path / "w.log"),
                     "--lastlog-file", str(tmp_path / "w.log"), "--max-clients", "50"],
                    tmp_path, greencmd_env())
    yield server
    # Workers first: once the supervisor is gone they are no longer its children.
    for pid in worker_pids(server):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()
    assert not server.complaints()


def worker_pids(server):
    return server.children()


def test_two_workers_serve_the_same_port(workers):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    workers.wait_for_count("Worker", 2)
    replies = [workers.talk(b"help\nlastlog 1\n") for _ in range(20)]
    assert all(reply.startswith(HELP + b"Begin lastlog\n") for reply in replies)


def test_the_shared_listen_queue_keeps_its_length(workers):
    # asyncio listens again on a socket it is given, with its own backlog (100) unless
    # told: the workers shrank the queue greencmd made 4096 long. Stopped workers take
    # nothing from it, so 120 connections must all fit.
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    workers.wait_for_count("Serving in worker process", 2)
    with stopped(*worker_pids(workers)):
        assert connections_that_fit(socket.AF_INET, (workers.host, workers.port), 120) == 120


def test_a_killed_worker_is_started_again(workers):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    victim = worker_pids(workers)[0]
    os.kill(victim, signal.SIGKILL)
    workers.wait_for_log(lambda line: "(pid %d) exited with status -9" % victim in line
                         and "starting it again" in line)
    wait_until(lambda: len(worker_pids(workers)) == 2 and victim not in worker_pids(workers),
               15, "a new worker")
    assert workers.talk(b"help\n") == HELP


def test_sigterm_while_a_worker_waits_to_be_started_again_stops_them_all(workers):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    # A worker that dies within a second of its start waits a second to be started
    # again. Kill worker 0 until one of its deaths comes that soon (the first does,
    # unless this machine is very slow).
    killed: set[int] = set()
    for _ in range(5):
        victim = workers.wait_for_log(lambda line: started_worker_0(line, killed))
        killed.add(victim)
        os.kill(victim, signal.SIGKILL)
        died = workers.wait_for_log(
            lambda line, pid=victim: line if "(pid %d) exited" % pid in line else None)
        if "starting it again in" in died:
            break
    else:
        pytest.fail("worker 0 never died within a second of its start")
    # The SIGTERM is taken at once, in the middle of that second: worker 0 is not
    # started again, the other stops, the supervisor exits 0.
    assert workers.stop() == 0
    waiting = workers.lines.index(died)
    assert not [line for line in workers.lines[waiting:] if "started (pid" in line]
    assert "Stopping 1 workers" in next(line for line in workers.lines[waiting:]
                                        if "Stopping" in line)
    assert workers.lines[-1].endswith("Main loop terminated.")


def started_worker_0(line: str, not_these: set[int]) -> int | None:
    """The pid of a "Worker 0 started" line, unless it is one of ``not_these``."""
    match = re.search(r"Worker 0 started \(pid (\d+)\)", line)
    return int(match[1]) if match and int(match[1]) not in not_these else None


def test_sigterm_drains_every_worker_and_exits_0(workers):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    workers.wait_for_count("Worker", 2)
    sessions = [workers.connect() for _ in range(6)]
    for sock in sessions:
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP
    assert workers.stop() == 0
    for sock in sessions:
        assert read_all(sock) == b"Server shutting down, bye!\n"
        sock.close()
    assert workers.children() == []
    assert workers.lines[-1].endswith("Main loop terminated.")


def test_sigterm_while_the_workers_start_stops_every_one_of_them(tmp_path, engine):
    """The supervisor says it is starting before it forks its workers: a SIGTERM then
    lands between forks, or in a worker not yet on its own signal handling."""
    for attempt in range(5):
        server = Server(["--engine", engine, "--port", "0", "--workers", "4",
                         "--log-file", "", "--lastlog-file", os.devnull],
                        tmp_path, greencmd_env())
        assert server.stop(timeout=20) == 0, attempt
        assert server.lines[-1].endswith("Main loop terminated."), attempt
        assert not server.complaints()


def test_sighup_makes_every_worker_reopen_the_log(workers, tmp_path):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    workers.wait_for_count("Serving in worker process", 2)  # their handlers are in
    log = tmp_path / "w.log"
    log.rename(tmp_path / "w.log.1")
    workers.proc.send_signal(signal.SIGHUP)
    # The supervisor and both workers each say so in the new file.
    wait_until(lambda: log.exists() and log.read_text().count("Log file reopened.") == 3, 10,
               "log file reopened by the supervisor and both workers")
    # Enough connections that both workers take some; each must write to the new file.
    for _ in range(40):
        assert workers.talk(b"help\n") == HELP
    wait_until(lambda: log.read_text().count("Client connection") == 40, 10,
               "every connection logged in the new file")
    assert "Client connection" not in (tmp_path / "w.log.1").read_text()


def test_workers_are_not_for_the_twisted_engine():
    result = run_greencmd("serve", "--engine", "twisted", "--workers", "2", "--port", "0")
    assert result.returncode == 2 and b"gevent and asyncio engines only" in result.stderr


def test_metrics_with_workers_is_a_usage_error():
    # Found by a soak: every worker bound the metrics port; one served, the other
    # failed and was started again every second, for ever.
    result = run_greencmd("serve", "--workers", "2", "--port", "0", "--metrics",
                          "127.0.0.1:%d" % free_port(), "--log-file", "", timeout=60)
    assert result.returncode == 2
    assert b"--metrics serves one process's figures" in result.stderr
    assert b"Traceback" not in result.stderr


def test_busy_port_with_workers_exits_1(workers):
    result = run_greencmd("serve", "--workers", "2", "--port", str(workers.port),
                          "--log-file", "")
    assert result.returncode == 1
    assert result.stderr == (b"greencmd: cannot listen on 127.0.0.1:%d: address already in use\n"
                             % workers.port)


def test_workers_stop_when_the_supervisor_is_killed(workers):
    wait_until(lambda: len(worker_pids(workers)) == 2, 15, "two workers")
    pids = worker_pids(workers)
    workers.proc.kill()
    workers.proc.wait()
    wait_until(lambda: not any(os.path.exists("/proc/%d" % pid) and not is_zombie(pid)
                               for pid in pids), 15, "workers gone with their supervisor")


def is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


#: One whole log line, as every line of stdout and of the log file must be.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] [^\n]+")


@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED", "buffered"])
def test_workers_sharing_stdout_and_the_log_file_never_split_a_line(tmp_path, engine,
                                                                   unbuffered):
    env = {k: v for k, v in greencmd_env().items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    log = tmp_path / "w.log"
    server = Server(["--engine", engine, "--port", "0", "--workers", "2", "--log-file",
                     str(log), "--max-clients", "200"], tmp_path, env)
    try:
        wait_until(lambda: len(worker_pids(server)) == 2, 15, "two workers")
        server.wait_for_count("Serving in worker process", 2)

        wrong = []

        def hammer() -> None:  # both workers log at once, far more than a buffer per flush
            # A thread's assert or exception would not fail the test: it is noted instead.
            try:
                for _ in range(5):
                    if server.talk(b"help\n" * 1000) != HELP * 1000:
                        wrong.append("a wrong reply")
            except Exception as exc:
                wrong.append(repr(exc))

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
        assert server.stop() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    file_lines = log.read_text().splitlines()
    assert len(file_lines) > 30000  # a line per request
    assert [line for line in server.lines + file_lines if not LOG_LINE.fullmatch(line)] == []
