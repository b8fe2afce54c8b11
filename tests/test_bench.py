"""greencmd bench against real servers: it runs, it checks replies, it reports errors."""

import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, greencmd_env, read_all, run_greencmd


def bench(server, *args):
    return run_greencmd("bench", "--port", str(server.port), "--seconds", "0.3", *args,
                        timeout=120)


def test_every_default_scenario_runs_with_zero_errors(start_server, tmp_path):
    server = start_server("--max-clients", "50", "--quiet")
    result = bench(server, "-c", "5", "--size-mib", "2", "--directory", str(tmp_path),
                   "--server-pid", str(server.proc.pid), "--json")
    assert result.returncode == 0, result.stderr
    results = {r["scenario"]: r for r in json.loads(result.stdout)}
    assert set(results) == {"unknown", "pipeline", "churn", "comhash", "lastlog"}
    for name, r in results.items():
        assert r["errors"] == 0 and r["count"] > 0 and r["rate"] > 0, (name, r)
        # Clock ticks are 10 ms: a short run of a cheap scenario may read 0.
        assert r["server_us_per_op"] is not None and r["server_us_per_op"] >= 0, name
    assert results["comhash"]["extra"]["hashlib_single_thread_mb_s"] > 0
    assert b"bench: unknown" in result.stderr  # progress on stderr


def test_paced_churn_never_starts_more_connections_than_its_schedule(start_server):
    server = start_server("--quiet")
    result = bench(server, "-c", "20", "--rate", "40", "--seconds", "1", "--json", "churn")
    assert result.returncode == 0, result.stderr
    churn = json.loads(result.stdout)[0]
    assert churn["extra"] == {"concurrency": 20, "offered_per_second": 40}
    assert churn["errors"] == 0 and churn["count"] > 0
    # As fast as it can, the server ends thousands a second; the schedule allows 40
    # in the first second (and one at its start).
    assert churn["count"] <= 41


def states_while_churning(server, *args: str) -> str:
    """The state letters (/proc/PID/stat) of a paced churn, sampled 20 times once it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "greencmd", "bench", "--port", str(server.port), "--seconds",
         "3", "-c", "20", "--rate", "40", "--json", *args, "churn"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=greencmd_env())
    try:
        assert b"bench: churn" in proc.stderr.readline()  # the loop starts now
        states = ""
        for _ in range(20):
            time.sleep(0.05)
            with open("/proc/%d/stat" % proc.pid) as f:
                states += f.read().rsplit(")", 1)[1].split()[0]
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    churn = json.loads(out)[0]
    assert proc.returncode == 0 and churn["errors"] == 0 and churn["count"] > 0, churn
    assert churn["count"] <= 3 * 40 + 1  # busy or not, the schedule holds
    assert churn["extra"].get("busy_poll", False) is ("--busy-poll" in args)
    return states


@pytest.mark.engines("gevent")  # the load generator's behaviour: any server will do
def test_busy_poll_never_sleeps_and_says_so(start_server):
    server = start_server("--quiet")
    # Paced at 40 a second, the load generator has nothing to do 99% of the time:
    # it sleeps (S) in epoll_wait, unless it busy-polls, when it is always running
    # or waiting for a CPU (R).
    asleep = states_while_churning(server)
    busy = states_while_churning(server, "--busy-poll")
    assert asleep.count("S") >= 10, asleep  # (a CPU shared with other tests may keep it R)
    assert busy.count("R") >= 16, busy


@pytest.mark.parametrize("rate", ["0", "-5", "many"])
def test_a_rate_that_is_not_a_positive_number_is_one_sentence_exit_2(start_server, rate):
    server = start_server("--quiet")
    result = bench(server, "--rate", rate, "churn")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr and b"--rate" in result.stderr


def test_table_for_people(start_server):
    server = start_server("--quiet")
    result = bench(server, "-c", "2", "unknown")
    assert result.returncode == 0
    header, row = result.stdout.decode().splitlines()[:2]
    assert header.split()[:3] == ["scenario", "rate", "unit"]
    assert row.split()[0] == "unknown" and row.split()[2] == "replies/s"


def test_wrong_replies_are_errors_and_exit_1(start_server):
    server = start_server("--max-clients", "2", "--quiet")
    result = bench(server, "-c", "5", "--json", "unknown")
    assert result.returncode == 1
    [r] = json.loads(result.stdout)
    assert r["errors"] >= 3
    assert any("Too many connections" in example for example in r["examples"])


def test_idle_scenario_reads_server_memory(start_server):
    server = start_server("--max-clients", "200", "--quiet")
    result = bench(server, "--idle", "100", "-c", "5", "--server-pid", str(server.proc.pid),
                   "--json", "idle")
    assert result.returncode == 0, result.stderr
    [r] = json.loads(result.stdout)
    assert r["errors"] == 0 and r["count"] > 0
    assert "rss_kib_per_session" in r["extra"]


def test_unreachable_server_is_one_sentence():
    # Bound but not listening: a connect is refused, and no other test's server can
    # take the port meanwhile (a stopped server's port could be given to one).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        result = run_greencmd("bench", "--port", str(port), "unknown")
    assert result.returncode == 3  # as the client: the server cannot be reached
    assert result.stderr.splitlines()[-1] == (
        b"greencmd: unknown: cannot reach 127.0.0.1:%d: connection refused" % port)
    assert b"Traceback" not in result.stderr


def test_a_refusing_server_gets_advice_and_no_figures(start_server):
    server = start_server("--quiet")  # the default --max-clients 10
    result = bench(server, "-c", "25", "unknown")
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "start it with --max-clients 25 or more" in out
    row = out.splitlines()[1].split()
    assert row[:2] == ["unknown", "-"] and "no figures" in out


def test_error_replies_are_errors_not_successes(start_server):
    # No lastlog source at all: every reply is an error line.
    server = start_server("--quiet", "--log-file", "", "--lastlog-file", "/nonexistent/log")
    result = bench(server, "-c", "2", "--json", "lastlog")
    assert result.returncode == 1
    (r,) = json.loads(result.stdout)
    assert r["errors"] > 0 and r["count"] == 0 and r["rate"] is None
    assert any(e.startswith("error reply b") and "An error occured: " in e
               for e in r["examples"])


def test_lastlog_of_a_moving_log_is_checked_by_its_form(start_server, tmp_path):
    own = tmp_path / "own.log"  # the server's own log: every request adds lines to it
    server = start_server("--log-file", str(own), "--lastlog-file", str(own))
    result = bench(server, "-c", "2", "--json", "lastlog")
    assert result.returncode == 0, result.stdout
    (r,) = json.loads(result.stdout)
    assert r["errors"] == 0 and r["count"] > 0 and r["rate"] > 0


def test_idle_sessions_refused_give_no_memory_figure(start_server):
    server = start_server("--quiet", "--max-clients", "5")
    result = bench(server, "--idle", "20", "--server-pid", str(server.proc.pid), "--json",
                   "idle")
    assert result.returncode == 1
    (r,) = json.loads(result.stdout)
    assert r["extra"] == {} and r["rate"] is None
    assert any("--max-clients" in e for e in r["examples"])


def test_bench_authenticates_with_a_token(start_server, tmp_path):
    token = tmp_path / "token"
    token.write_text("b" * 32 + "\n")
    token.chmod(0o600)
    server = start_server("--auth-token-file", str(token), "--max-clients", "100")
    result = run_greencmd("bench", "--port", str(server.port), "--token-file", str(token),
                          "-c", "5", "-s", "0.3", "--json", "unknown", "pipeline", "churn",
                          "lastlog", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(r["errors"] == 0 and r["count"] > 0 for r in json.loads(result.stdout))
    wrong = tmp_path / "wrong"
    wrong.write_text("w" * 32 + "\n")
    wrong.chmod(0o600)
    refused = run_greencmd("bench", "--port", str(server.port), "--token-file", str(wrong),
                           "-s", "0.3", "unknown")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (b"greencmd: unknown: the server refused the "
                                               b"token: Authentication failed.")
    assert b"Traceback" not in refused.stderr


def start_floor(tmp_path, *options):
    """benchmarks/floor.py on a free port; (process, port)."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "floor.py"), "--port", "0",
         "--lastlog-file", str(tmp_path / "source.log"), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=greencmd_env())
    line = proc.stdout.readline()
    assert b"floor server starting on" in line, proc.stderr.read()
    return proc, int(line.rsplit(b":", 1)[1])


def floor_talk(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        return read_all(sock)


@pytest.mark.engines("gevent")
@pytest.mark.parametrize("options", [[], ["--spec", "--children", "guarded"],
                                     ["--children", "greenlets"]])
def test_the_floor_answers_as_greencmd_does(start_server, tmp_path, options):
    (tmp_path / "source.log").write_bytes(b"".join(b"line %d\n" % i for i in range(30)))
    server = start_server("--lastlog-file", str(tmp_path / "source.log"))
    talk = b"help\nfrob\nlastlog 3\nlastlog\nexit\nhelp\n"  # nothing after exit is answered
    spec = "--spec" in options
    proc, port = start_floor(tmp_path, *options)
    try:
        assert floor_talk(port, talk) == server.talk(talk)
        assert floor_talk(port, b"exit\n") == b""
        # --spec logs what greencmd logs for these talks, in its format (within 50 ms)
        expected = ["Client connection from 127.0.0.1"] + [
            "Cmd received from 127.0.0.1 : %s" % word
            for word in ("help", "frob", "lastlog 3", "lastlog", "exit")] + [
            "Lost client connection. Reason: Connection was closed cleanly.",
            "Client connection from 127.0.0.1", "Cmd received from 127.0.0.1 : exit",
            "Lost client connection. Reason: Connection was closed cleanly."]
        if spec:
            logged = [proc.stdout.readline().decode() for _ in expected]
            assert [re.sub(r"^\S+ \S+ \[[^]]+\] ", "", line).rstrip("\n")
                    for line in logged] == expected
    finally:
        proc.terminate()
    assert proc.communicate(timeout=20)[0] == b""  # nothing more (the bare floor: nothing)


def benchmark(name: str):
    """benchmarks/NAME.py as a module (kernel_share.py imports compare.py beside it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.engines("gevent")
@pytest.mark.parametrize("frames, where", [
    (["ffffffff8170 unmap_page_range ([kernel.kallsyms])",
      "ffffffff8171 __vm_munmap ([kernel.kallsyms])",
      "ffffffff8172 __x64_sys_munmap ([kernel.kallsyms])",
      "ffffffff8224 do_syscall_64 ([kernel.kallsyms])",
      "7f00 __munmap (/usr/lib/x86_64-linux-gnu/libc.so.6)"], "kernel: munmap"),
    (["ffffffff8100 clear_page_erms ([kernel.kallsyms])",
      "ffffffff8101 handle_mm_fault ([kernel.kallsyms])",
      "ffffffff8102 asm_exc_page_fault ([kernel.kallsyms])",
      "7f00 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)"], "kernel: page faults"),
    (["ffffffff8100 handle_softirqs ([kernel.kallsyms])",
      "ffffffff8101 irq_exit_rcu ([kernel.kallsyms])"], "kernel, other"),
    (["7f00 g_switchstack (/venv/greenlet/_greenlet.cpython-311-x86_64-linux-gnu.so)"],
     "user: _greenlet"),
    (["7f00 _PyObject_Malloc (/usr/lib/libpython3.11.so.1.0)",
      "ffffffff8100 __x64_sys_read ([kernel.kallsyms])"], "user: libpython3.11.so.1.0"),
])
def test_kernel_share_files_a_sample_where_it_ran(frames, where):
    # The innermost frame decides kernel or user; a kernel sample goes under the
    # system call it was in, however deep, or under page faults.
    assert benchmark("kernel_share").category(frames) == where


@pytest.mark.engines("gevent")
@pytest.mark.parametrize("frames, where", [
    (["ffffffff8172 __x64_sys_fcntl ([kernel.kallsyms])",
      "30c729 os_set_blocking (/usr/lib/libpython3.12.so.1.0)",
      "7f00 py::Pipe.__init__:/srv/greencmd/gevent_engine/fast_subprocess.py (/tmp/perf-1.map)",
      "7f01 py::Popen.__init__:/srv/greencmd/gevent_engine/fast_subprocess.py (/tmp/perf-1.map)"],
     "Pipe.__init__ (fast_subprocess.py)"),
    (["7f00 py::<lambda>:<string> (/tmp/perf-1.map)"], "<lambda> (<string>)"),
    (["7f00 py::dirname:<frozen posixpath> (/tmp/perf-1.map)"],
     "dirname (<frozen posixpath>)"),
    (["ffffffff8100 handle_softirqs ([kernel.kallsyms])",
      "4ea22 ev_run (/venv/gevent/libev/corecext.cpython-312-x86_64-linux-gnu.so)"],
     "no Python function"),
])
def test_kernel_share_by_python_function_takes_the_innermost_one(frames, where):
    # --by-python-function: a sample belongs to the Python function that was
    # running, whatever C code or system call it was in below it.
    assert benchmark("kernel_share").python_function(frames) == where


@pytest.mark.parametrize("stop_under_load", [False, True])
def test_the_soak_leaves_a_server_as_it_found_it_and_says_so(stop_under_load):
    # benchmarks/soak.py, briefly: its report line, and exit 0 when nothing is left
    # (a fault it finds makes it exit 1; docs/performance.md, "Soak"). Stopped under
    # load, the server must still exit 0 with its closing line.
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"),
                             "--seconds", "1", "--clients", "4",
                             *(["--stop-under-load"] if stop_under_load else [])],
                            env=greencmd_env(), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout.decode()
    assert report.startswith("gevent, 4 clients for 1 s: exit 0; descriptors " if not
                             stop_under_load else
                             "gevent, 4 clients for 1 s, stopped under load: exit 0; processes")
    assert "processes left 0;" in report and report.rstrip().endswith("complaints 0")


def test_the_soak_finds_what_a_childs_session_left_running():
    # What a server's children leave running after its exit is found by their session,
    # whoever their parent is by then: here a shell and its two sleeps.
    soak = benchmark("soak")
    child = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"], start_new_session=True)
    try:
        deadline = 50
        while len(soak.left_in({child.pid})) < 3 and deadline:
            time.sleep(0.1)
            deadline -= 1
        assert child.pid in soak.sessions_led([os.getpid()])
        assert sorted(line.split()[1] for line in soak.left_in({child.pid})) == [
            "sh", "sleep", "sleep"]
        child.kill()
        child.wait()
        assert [line.split()[1] for line in soak.left_in({child.pid})] == ["sleep", "sleep"]
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    deadline = 50
    while soak.left_in({child.pid}) and deadline:
        time.sleep(0.1)
        deadline -= 1
    assert soak.left_in({child.pid}) == []
