"""Children where the kernel gives no pidfds: Linux before 5.3, or a seccomp filter that
denies ``pidfd_open`` (Docker's default profile did before 20.10).

The server runs under a real seccomp filter that fails ``pidfd_open`` with ENOSYS,
installed by a ``sitecustomize`` module before greencmd is imported. Every command
that runs a child must still work, and leave no child behind. Running out of
descriptors, by contrast, says nothing about pidfds (a second ``sitecustomize``
lowers the server's descriptor limit).
"""

from __future__ import annotations

import os
import signal

from conftest import SAMPLE_LINES, greencmd_env, read_until, wait_until

DENY_PIDFD_OPEN = '''
import ctypes, errno, struct

NR_PIDFD_OPEN = 434  # the same on every Linux architecture
FILTER = [
    (0x20, 0, 0, 0),  # load the system call's number
    (0x15, 0, 1, NR_PIDFD_OPEN),  # pidfd_open? the next rule : skip it
    (0x06, 0, 0, 0x00050000 | errno.ENOSYS),  # fail with ENOSYS
    (0x06, 0, 0, 0x7FFF0000),  # allow
]
program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *rule) for rule in FILTER))

class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

fprog = Fprog(len(FILTER), ctypes.addressof(program))
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
    raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")
'''

PROGRAMS = """
[commands.Hello]
run = ["echo", "hello world"]

[commands.fail]
run = ["sh", "-c", "echo out; echo 'last words' >&2; exit 3"]

[commands.slow]
run = ["sh", "-c", "sleep 0.3; echo done"]
"""


def seccomp_mode(pid: int) -> int:
    """The ``Seccomp:`` field of /proc/PID/status (2: a filter is installed)."""
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Seccomp:"))


def test_commands_that_run_a_child_work_where_pidfd_open_is_denied(start_server, tmp_path):
    site = tmp_path / "deny-pidfds"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DENY_PIDFD_OPEN)
    config = tmp_path / "commands.toml"
    config.write_text(PROGRAMS)
    env = greencmd_env()
    env["PYTHONPATH"] = str(site) + os.pathsep + env["PYTHONPATH"]
    server = start_server("--config", str(config), env=env)
    assert seccomp_mode(server.proc.pid) == 2
    with server.connect() as sock:
        sock.sendall(b"lastlog 2\n")
        assert read_until(sock, b"End lastlog\n") == (
            b"Begin lastlog\n" + b"\n".join(SAMPLE_LINES[-2:]) + b"\nEnd lastlog\n")
        sock.sendall(b"hello\nfail\n")
        assert read_until(sock, b"End Hello\n") == b"Begin Hello\nhello world\nEnd Hello\n"
        assert read_until(sock, b"\n") == (
            b"An error occured: fail exited with status 3: last words\n")
        sock.sendall(b"slow\n")  # still running when its exit is first asked about
        assert read_until(sock, b"End slow\n") == b"Begin slow\ndone\nEnd slow\n"
        sock.sendall(b"follow 1\n")
        last = SAMPLE_LINES[-1] + b"\n"
        assert read_until(sock, last).endswith(last)
        sock.sendall(b"stop\n")
        assert read_until(sock, b"End follow\n").endswith(b"End follow\n")


LOW_DESCRIPTOR_LIMIT = '''
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
'''


def catches_sigchld(pid: int) -> bool:
    """True when process ``pid`` has a SIGCHLD handler (/proc/PID/status, SigCgt)."""
    with open("/proc/%d/status" % pid) as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & 1 << (signal.SIGCHLD - 1))


def test_a_child_asked_for_while_out_of_descriptors_fails_alone(start_server, tmp_path, engine):
    """Out of descriptors, ``lastlog`` says so; once some are free it works again, and
    the gevent engine still awaits children on pidfds (running out is no sign that the
    kernel lacks them, and the fallback would install a SIGCHLD handler for good)."""
    site = tmp_path / "few-descriptors"
    site.mkdir()
    (site / "sitecustomize.py").write_text(LOW_DESCRIPTOR_LIMIT)
    env = greencmd_env()
    env["PYTHONPATH"] = str(site) + os.pathsep + env["PYTHONPATH"]
    server = start_server("--max-clients", "100", env=env)
    held = server.connect()
    held.sendall(b"help\n")
    read_until(held, b"\n")
    flood = [server.connect() for _ in range(60)]
    try:
        server.wait_for_log(lambda line: "Cannot accept connections" in line)
        held.sendall(b"lastlog 1\n")
        assert read_until(held, b"\n").startswith(b"An error occured: ")
    finally:
        for sock in flood:
            sock.close()

    def lastlog_works() -> bool:
        held.sendall(b"lastlog 1\n")
        reply = read_until(held, b"\n")
        while not reply.startswith(b"An error occured") and not reply.endswith(b"End lastlog\n"):
            reply += read_until(held, b"\n")
        return reply == b"Begin lastlog\n" + SAMPLE_LINES[-1] + b"\nEnd lastlog\n"

    wait_until(lastlog_works, message="lastlog once descriptors are free")
    if engine == "gevent":
        assert not catches_sigchld(server.proc.pid)
    held.close()
