"""TLS: real certificates from a throwaway CA made with the openssl command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from conftest import (
    ENGINES,
    HELP,
    HUGE,
    REPO,
    Server,
    greencmd_env,
    hash_line,
    read_until,
    reset,
    run_greencmd,
    sparse_file,
    stopped,
)

NOT_FOUND = b"Command not found.\n"
#: asyncio serves TLS from Python 3.11 on (StreamWriter.start_tls); before, greencmd
#: refuses to start it (tested below), so these tests run on the other two engines.
TLS_ENGINES = ENGINES if sys.version_info >= (3, 11) else ("gevent", "twisted")
pytestmark = pytest.mark.engines(*TLS_ENGINES)
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
CA_EXTENSIONS = ["-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"]


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory, ca: str, name: str, san: str, extra: str = "") -> None:
    """``name.pem`` and ``name.key``, signed by ``ca``, for the names in ``san``."""
    openssl("req", *EC, "-keyout", name + ".key", "-out", name + ".csr", "-subj",
            "/CN=" + name, cwd=directory)
    (directory / (name + ".ext")).write_text("subjectAltName=%s\n%s" % (san, extra))
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext",
            cwd=directory)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a stranger CA, a server certificate, one with a wrong name, a client's."""
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "stranger"):  # as docs/certificates.md makes one (Python 3.13 checks)
        openssl("req", "-x509", *EC, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2",
                "-subj", "/CN=greencmd test " + ca, *CA_EXTENSIONS, cwd=directory)
    issue(directory, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    issue(directory, "ca", "elsewhere", "DNS:other.example")
    issue(directory, "ca", "client", "DNS:client.example")
    issue(directory, "stranger", "intruder", "DNS:client.example")
    # A chain, as most real certificates come: root -> intermediate -> server.
    issue(directory, "ca", "intermediate", "DNS:intermediate.example",
          "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    issue(directory, "intermediate", "chained", "DNS:localhost,IP:127.0.0.1")
    (directory / "chain.pem").write_bytes((directory / "chained.pem").read_bytes()
                                          + (directory / "intermediate.pem").read_bytes())
    (directory / "chain.key").write_bytes((directory / "chained.key").read_bytes())
    return directory


@pytest.fixture
def tls_server(start_server, pki):
    def start(cert: str = "server", *args: str):
        return start_server("--tls-cert", str(pki / (cert + ".pem")),
                            "--tls-key", str(pki / (cert + ".key")), *args)

    return start


def client(server, *args: str, **kwargs):
    return run_greencmd("client", "--port", str(server.port), *args, **kwargs)


def test_a_good_handshake(tls_server, pki):
    server = tls_server()
    result = client(server, "--cafile", str(pki / "ca.pem"), "help")
    assert (result.returncode, result.stdout, result.stderr) == (0, HELP, b"")


def test_requests_from_stdin_over_tls(tls_server, pki):
    server = tls_server()
    result = client(server, "--cafile", str(pki / "ca.pem"), input=b"help\nbogus\n")
    assert (result.returncode, result.stdout) == (1, HELP + NOT_FOUND)


def test_a_certificate_chain_is_sent_whole(tls_server, pki):
    server = tls_server("chain")  # the client trusts only the root
    result = client(server, "--cafile", str(pki / "ca.pem"), "help")
    assert (result.returncode, result.stdout, result.stderr) == (0, HELP, b"")


def test_an_unknown_ca_is_exit_3_and_one_log_line(tls_server, pki):
    server = tls_server()
    result = client(server, "--cafile", str(pki / "stranger.pem"), "help")
    assert result.returncode == 3
    assert result.stderr.startswith(b"greencmd: TLS handshake with 127.0.0.1:%d failed: "
                                    b"certificate verify failed" % server.port)
    assert result.stderr.count(b"\n") == 1
    server.wait_for_log(lambda line: "TLS handshake failed: " in line)
    assert server.count_log("Traceback") == 0


def test_a_wrong_host_name_is_exit_3(tls_server, pki):
    server = tls_server("elsewhere")
    result = client(server, "--cafile", str(pki / "ca.pem"), "help")
    assert result.returncode == 3
    assert b"certificate verify failed: IP address mismatch" in result.stderr


def test_mutual_tls_with_a_client_certificate(tls_server, pki):
    server = tls_server("server", "--tls-client-ca", str(pki / "ca.pem"))
    result = client(server, "--cafile", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
                    "--key", str(pki / "client.key"), "help")
    assert (result.returncode, result.stdout) == (0, HELP)


@pytest.mark.parametrize("who", [None, "intruder"])
def test_mutual_tls_without_a_good_client_certificate_is_refused(tls_server, pki, who):
    server = tls_server("server", "--tls-client-ca", str(pki / "ca.pem"))
    extra = [] if who is None else ["--cert", str(pki / (who + ".pem")),
                                     "--key", str(pki / (who + ".key"))]
    result = client(server, "--cafile", str(pki / "ca.pem"), *extra, "help")
    assert result.returncode == 3
    assert result.stdout == b""
    server.wait_for_log(lambda line: "TLS handshake failed: " in line)
    assert server.count_log("Cmd received") == 0
    assert server.count_log("Traceback") == 0


def test_a_plain_client_on_a_tls_port_gets_nothing(tls_server):
    server = tls_server()
    assert server.talk(b"help\n") == b""
    server.wait_for_log(lambda line: "TLS handshake failed: " in line)
    result = client(server, "help")
    assert result.returncode == 3


def test_a_client_that_sent_and_reset_before_it_was_accepted_is_one_log_line(tls_server, pki):
    # Found by a soak: bytes of a handshake, then a reset, all before the server took
    # the connection. gevent's wrap_socket() raised for it outside the handshake's
    # error handling: a traceback per such client (1,148 lines in 30 seconds).
    server = tls_server()
    with stopped(server.proc.pid):  # the kernel completes the connections
        for _ in range(3):
            sock = server.connect()
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"r" * 40)
            reset(sock)
    server.wait_for_count("TLS handshake failed: connection reset by peer", 3)
    result = client(server, "--cafile", str(pki / "ca.pem"), "help")
    assert (result.returncode, result.stdout) == (0, HELP)


def test_shutdown_while_clients_are_in_their_handshake_is_clean(tls_server, pki):
    # Found by a soak stopped under load: asyncio's start_tls() returned no transport
    # for a connection shutdown cut off in its handshake (it "succeeded" with the
    # connection gone), and the session then failed on it: an unhandled error per
    # such client, and a traceback from the stream's __del__ at exit.
    server = tls_server("server", "--grace", "0")
    socks = [server.connect() for _ in range(3)]
    for sock in socks:  # the ClientHello's first bytes, not all of it
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"r" * 40)
    with tls_socket(server, pki) as sock:  # a session, so shutdown has someone to wait for
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP  # by now the three are in their handshake
        assert server.stop() == 0
    for sock in socks:
        sock.close()
    assert server.lines[-1].endswith("Main loop terminated.")


def test_shutdown_cuts_off_a_silent_tls_client_after_another_one_left(tls_server, pki):
    # Found by a soak stopped under load: the twin cut off every connection open when
    # shutdown said bye, and Twisted's TLS layer raises for one that had closed since
    # (an unhandled error in the shutdown's Deferred).
    server = tls_server("server", "--grace", "0")
    with tls_socket(server, pki) as leaving, tls_socket(server, pki) as silent:
        for sock in (leaving, silent):
            sock.sendall(b"help\n")
            assert read_until(sock, b"\n") == HELP
        server.proc.send_signal(signal.SIGTERM)
        assert read_until(leaving, b"\n") == b"Server shutting down, bye!\n"
        leaving.close()  # the other never answers the server's close_notify
        assert server.stop() == 0
    assert server.lines[-1].endswith("Main loop terminated.")


def test_a_client_that_never_handshakes_is_dropped_after_ten_seconds(tls_server, pki):
    server = tls_server()
    with server.connect(timeout=30) as sock:
        started = time.monotonic()
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass  # dropped either way (the twin aborts)
        assert 9 < time.monotonic() - started < 20
    server.wait_for_log(lambda line: "TLS handshake failed: no handshake within 10 seconds"
                        in line)
    with tls_socket(server, pki) as sock:  # and it still serves
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP


def tls_socket(server, pki) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    return context.wrap_socket(server.connect(), server_hostname="127.0.0.1")


def test_garbage_after_the_handshake_ends_only_that_session(tls_server, pki):
    server = tls_server()
    with tls_socket(server, pki) as sock:
        sock.sendall(b"\x00\xff\x1b garbage\n")
        assert read_until(sock, b"\n") == NOT_FOUND
        raw = socket.socket(fileno=sock.fileno())  # below TLS: bytes that are no record
        raw.sendall(b"\x17\x03\x03\x00\x05hello, not encrypted")
        raw.detach()
        # The session ends: with a TLS alert or a reset (gevent, Twisted), or a plain
        # close (asyncio's TLS layer does not flush the alert OpenSSL queued).
        sock.settimeout(10)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            while sock.recv(100):
                pass
    with tls_socket(server, pki) as sock:
        sock.sendall(b"help\n")
        assert read_until(sock, b"\n") == HELP
    assert server.count_log("Traceback") == 0


def test_a_reset_over_tls_stops_the_hash_its_client_was_waiting_for(tls_server, pki,
                                                                  tmp_path):
    # Nothing can be peeked through the encryption: the server must see the reset on
    # the descriptor below TLS. One hashing thread: the small hash can only run once
    # the huge one has stopped.
    server = tls_server("server", "--hash-threads", "1")
    huge = sparse_file(tmp_path / "huge.img", HUGE)
    (tmp_path / "small").write_bytes(b"small")
    sock = tls_socket(server, pki)
    sock.sendall(b"comhash %s\n" % bytes(huge))
    server.wait_for_log(lambda line: ": comhash" in line)
    time.sleep(0.3)  # the thread is hashing now
    reset(sock)
    server.wait_for_log(lambda line: "Reason: Connection was reset by peer." in line)
    with tls_socket(server, pki) as sock:
        sock.settimeout(60)
        sock.sendall(b"comhash %s\n" % bytes(tmp_path / "small"))
        assert read_until(sock, b"\n") == hash_line(b"small")


def test_an_idle_tls_session_times_out_and_a_busy_one_does_not(tls_server, pki):
    # The idle reaper asks whether anything from the client waits to be read: over
    # TLS, bytes already decrypted count too, and an idle session has none.
    server = tls_server("server", "--idle-timeout", "1")
    with tls_socket(server, pki) as idle, tls_socket(server, pki) as busy:
        idle.settimeout(10)
        for _ in range(8):  # about 1.6 s of requests: longer than the idle timeout
            busy.sendall(b"help\n")
            assert read_until(busy, b"\n") == HELP
            time.sleep(0.2)
        assert read_until(idle, b"bye!\n") == b"Idle timeout, bye!\n"
        busy.sendall(b"help\n")
        assert read_until(busy, b"\n") == HELP
    server.wait_for_count("Reason: Idle timeout.", 1)
    assert server.count_log("Reason: Idle timeout.") == 1


def test_follow_and_the_line_protocol_work_over_tls(tls_server, pki):
    server = tls_server()
    with tls_socket(server, pki) as sock:
        sock.sendall(b"follow 1\n")
        assert read_until(sock, b"sample log\n") == (b"Begin follow\nline 20 of the sample "
                                                     b"log\n")
        sock.sendall(b"\n")
        assert read_until(sock, b"End follow\n") == b"End follow\n"
        sock.sendall(b"comhash /nope\n")
        assert read_until(sock, b"\n").startswith(b"An error occured: [Errno 2]")


def test_the_fleet_client_over_tls(tls_server, pki):
    servers = [tls_server(), tls_server()]
    hosts = []
    for server in servers:
        hosts += ["--host", "127.0.0.1:%d" % server.port]
    result = run_greencmd("client", *hosts, "--cafile", str(pki / "ca.pem"), "help")
    assert result.returncode == 0, result.stdout
    assert result.stderr == b"2 servers: 2 ok, 0 error replies, 0 unreachable\n"


@pytest.mark.parametrize("args, words", [
    (["--tls-cert", "server.pem"], b"--tls-cert and --tls-key go together"),
    (["--tls-key", "server.key"], b"--tls-cert and --tls-key go together"),
    (["--tls-cert", "server.pem", "--tls-key", "client.key"], b"cannot load the certificate"),
    (["--tls-cert", "ca.srl", "--tls-key", "server.key"], b"cannot load the certificate"),
    (["--tls-client-ca", "ca.pem"], b"--tls-client-ca needs --tls-cert"),
])
def test_bad_tls_options_exit_2(pki, args, words):
    result = run_greencmd("serve", "--port", "0", "--log-file", "", *args, cwd=pki)
    assert result.returncode == 2
    assert words in result.stderr and b"Traceback" not in result.stderr


def test_openssl_s_client_sees_a_clean_tls_close_after_exit(tls_server, pki):
    server = tls_server()
    result = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % server.port, "-CAfile",
         str(pki / "ca.pem"), "-quiet", "-verify_return_error", "-ign_eof"],
        input=b"help\nexit\n", capture_output=True, timeout=30)
    assert HELP in result.stdout
    assert b"unexpected eof" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


def test_start_up_says_tls_is_on_and_mutual(tls_server, pki):
    server = tls_server("server", "--tls-client-ca", str(pki / "ca.pem"))
    server.wait_for_log(lambda line: line.endswith(
        "[-] TLS on, mutual (clients need a certificate signed by %s); auth off"
        % (pki / "ca.pem")))


def test_tls_mistakes_are_one_sentence_naming_the_cause_and_the_option(
        tls_server, start_server, pki):
    server = tls_server("server", "--tls-client-ca", str(pki / "ca.pem"))
    port = ["--port", str(server.port)]
    plain = run_greencmd("client", *port, "help")
    assert plain.returncode == 3
    assert plain.stderr == (b"greencmd: 127.0.0.1:%d closed the connection without a reply "
                            b"(a TLS port does that to a client without --tls)\n" % server.port)
    server.wait_for_log(lambda line: "TLS handshake failed: the client does not speak TLS"
                        in line)
    no_cert = run_greencmd("client", *port, "--cafile", str(pki / "ca.pem"), "help")
    assert no_cert.returncode == 3
    # asyncio's TLS layer closes without sending the alert: the client can only guess.
    assert b"client certificate" in no_cert.stderr and b"--cert and --key" in no_cert.stderr
    server.wait_for_log(lambda line: "the client sent no certificate" in line)
    stranger = run_greencmd("client", *port, "--cafile", str(pki / "ca.pem"), "--cert",
                            str(pki / "intruder.pem"), "--key", str(pki / "intruder.key"), "help")
    assert stranger.returncode == 3
    # Named as a refused certificate, or (a server that closes without an alert, as
    # asyncio's does) as one of the two likely causes, with the options for each.
    assert b"certificate" in stranger.stderr and b"--cert and --key" in stranger.stderr
    fleet = run_greencmd("client", "--host", "127.0.0.1:%d" % server.port, "--host",
                         "localhost:%d" % server.port, "--cafile", str(pki / "ca.pem"), "help")
    assert fleet.stdout.count(b"--cert and --key") == 2
    for result in (plain, no_cert, stranger, fleet):
        assert b"Traceback" not in result.stderr and b"not permitted" not in result.stderr
    plain_server = start_server()
    on_plain = run_greencmd("client", "--port", str(plain_server.port), "--cafile",
                            str(pki / "ca.pem"), "help")
    assert on_plain.returncode == 3
    assert b"it may not speak TLS (try without --tls and --cafile)" in on_plain.stderr


def test_the_certificate_recipe_in_the_docs_works_as_written(start_server, tmp_path):
    text = (REPO / "docs" / "certificates.md").read_text()
    recipe = text.split("```sh\n", 1)[1].split("```", 1)[0]
    made = tmp_path / "made"
    made.mkdir()
    done = subprocess.run(["sh", "-e", "-c", recipe], cwd=made, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert (made / "server.key").stat().st_mode & 0o077 == 0
    server = start_server("--tls-cert", str(made / "server.pem"), "--tls-key",
                          str(made / "server.key"), "--tls-client-ca", str(made / "ca.pem"))
    result = run_greencmd("client", "--port", str(server.port), "--cafile",
                          str(made / "ca.pem"), "--cert", str(made / "client.pem"), "--key",
                          str(made / "client.key"), "help")
    assert (result.returncode, result.stdout) == (0, HELP), result.stderr
    # The name in the certificate is checked too (the address is 127.0.0.1).
    by_ip = run_greencmd("client", "--host", "127.0.0.1:%d" % server.port, "--cafile",
                         str(made / "ca.pem"), "--cert", str(made / "client.pem"), "--key",
                         str(made / "client.key"), "--json", "help")
    assert json.loads(by_ip.stdout)["exit"] == 0


@pytest.mark.engines("gevent")  # the client is what is tested: one engine serves
def test_a_mixed_fleet_is_asked_in_one_call_from_a_hosts_file(start_server, pki, tmp_path):
    token = tmp_path / "web.token"
    token.write_text("w" * 32 + "\n")
    token.chmod(0o600)
    plain = start_server()
    secured = start_server("--tls-cert", str(pki / "server.pem"), "--tls-key",
                           str(pki / "server.key"), "--auth-token-file", str(token))
    slow = tmp_path / "unused"
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# old hosts, plain\n"
        "127.0.0.1:%d   # db1\n"
        "[web]\n"
        "127.0.0.1:%d timeout=5  # web1, on TLS with a token\n"
        "[web:vars]\n"
        "tls=true\n"
        "cafile=%s\n"
        "token-file=%s\n" % (plain.port, secured.port, pki / "ca.pem", token))
    everything = run_greencmd("client", "--hosts-file", str(hosts), "--json", "help")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    records = [json.loads(line) for line in everything.stdout.splitlines()]
    replies = {r["port"]: (r["exit"], r["reply"]) for r in records}
    with_auth = HELP.replace(b"quit\n", b"quit, auth TOKEN\n")
    assert replies == {plain.port: (0, HELP.decode()), secured.port: (0, with_auth.decode())}
    web = run_greencmd("client", "--hosts-file", str(hosts), "--group", "web", "help")
    assert web.returncode == 0
    assert web.stdout == b"127.0.0.1:%d: " % secured.port + with_auth
    missing = run_greencmd("client", "--hosts-file", str(hosts), "--group", "nope", "help")
    assert missing.returncode == 2 and b"has no group 'nope' (it has: web)" in missing.stderr
    hosts.write_text("127.0.0.1:%d colour=blue\n" % plain.port)
    bad = run_greencmd("client", "--hosts-file", str(hosts), "help")
    assert bad.returncode == 2 and b"line 1: 'colour=blue' is not a setting" in bad.stderr
    assert not slow.exists()


def test_bench_loads_a_tls_server(tls_server, pki, tmp_path):
    server = tls_server("server", "--max-clients", "100")
    result = run_greencmd("bench", "--port", str(server.port), "--host", "localhost",
                          "--cafile", str(pki / "ca.pem"), "-c", "5", "-s", "0.3",
                          "--idle", "20", "--directory", str(tmp_path), "--size-mib", "2",
                          "--json", "unknown", "pipeline", "lastlog", "comhash", "idle",
                          timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(result.stdout)
    assert [r["scenario"] for r in records] == ["unknown", "pipeline", "lastlog", "comhash",
                                                "idle"]
    assert all(r["errors"] == 0 and r["count"] > 0 for r in records), records
    churn = run_greencmd("bench", "--port", str(server.port), "--cafile",
                         str(pki / "ca.pem"), "churn")
    assert churn.returncode == 2 and b"churn measures plain TCP connects" in churn.stderr
    untrusted = run_greencmd("bench", "--port", str(server.port), "--tls", "unknown")
    assert untrusted.returncode == 3
    assert b"certificate verify failed" in untrusted.stderr.splitlines()[-1]


def test_a_ca_made_without_key_usage_is_named_where_python_refuses_it(tls_server, tmp_path):
    """Python 3.13 verifies strictly: a CA certificate without keyUsage (what a bare
    ``openssl req -x509`` makes) is refused, and the sentence says what to change.
    Older Pythons accept it."""
    openssl("req", "-x509", *EC, "-keyout", "old.key", "-out", "old.pem", "-days", "2",
            "-subj", "/CN=greencmd legacy CA", cwd=tmp_path)
    issue(tmp_path, "old", "legacy", "DNS:localhost,IP:127.0.0.1")
    server = tls_server(str(tmp_path / "legacy"))
    result = client(server, "--cafile", str(tmp_path / "old.pem"), "help")
    if sys.version_info >= (3, 13):
        assert result.returncode == 3
        assert result.stderr.endswith(
            b"CA cert does not include key usage extension: make the CA certificate again "
            b"with keyUsage=critical,keyCertSign and basicConstraints=critical,CA:TRUE\n")
    else:
        assert (result.returncode, result.stdout) == (0, HELP)


@pytest.mark.engines("asyncio")
def test_asyncio_tls_before_python_3_11_is_refused_in_one_sentence(pki):
    result = run_greencmd("serve", "--engine", "asyncio", "--port", "0", "--tls-cert",
                          str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                          timeout=10) if sys.version_info < (3, 11) else None
    if result is None:  # 3.11 and newer serve it: every test above runs on asyncio too
        assert TLS_ENGINES == ENGINES
        return
    assert result.returncode == 2
    assert result.stderr.endswith(b"Error: TLS with --engine asyncio needs Python 3.11 or "
                                  b"newer (StreamWriter.start_tls); use --engine gevent or "
                                  b"twisted.\n")


@contextlib.contextmanager
def resetting_tls_server(pki, in_handshake: str | None = None):
    """A TLS server that resets each connection as soon as its handshake is done.

    What a mutual-TLS server does when it refuses a client certificate and its reset
    overtakes the alert. TLS 1.2, where the server's message ends the handshake: the
    reset is there before the client's first write, which OpenSSL then calls an EOF.
    ``in_handshake``: ``"reset"`` or ``"close"`` on the client's first message instead,
    before any answer.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = listener.accept()
                with contextlib.suppress(OSError):
                    if in_handshake:
                        raw.recv(65536)  # the ClientHello, left unanswered
                        reset(raw) if in_handshake == "reset" else raw.close()
                    else:
                        reset(context.wrap_socket(raw, server_side=True))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux); close() would not
        listener.close()
        thread.join(30)


@pytest.mark.engines("gevent")  # the client is what is tested: no greencmd server here
def test_a_reset_before_any_reply_over_tls_names_the_likely_cause(pki):
    ca = str(pki / "ca.pem")
    with resetting_tls_server(pki) as port, resetting_tls_server(pki) as other:
        single = run_greencmd("client", "--port", str(port), "--cafile", ca, "help")
        with_token = run_greencmd("client", "--port", str(port), "--cafile", ca, "help",
                                  env=greencmd_env(GREENCMD_TOKEN="a token of twenty chars"))
        fleet = run_greencmd("client", "--host", "127.0.0.1:%d" % port, "--host",
                             "127.0.0.1:%d" % other, "--cafile", ca, "help")
    # Writing its request the client meets the reset, which OpenSSL calls an EOF (or,
    # reading, a reset): never "it may not speak TLS" after a handshake.
    hint = (b" the connection without a reply (a server with mutual TLS does that when it "
            b"refuses the client certificate: give --cert and --key signed by the CA it "
            b"trusts)")
    for result in (single, with_token):  # with a token, auth's write meets the reset
        assert result.returncode == 3
        assert result.stderr in (b"greencmd: 127.0.0.1:%d %s%s\n" % (port, how, hint)
                                 for how in (b"reset", b"closed")), result.stderr
    assert fleet.returncode == 3
    lines = fleet.stdout.splitlines()
    assert len(lines) == 2
    for server in (port, other):
        said = {b"127.0.0.1:%d: error: %s%s" % (server, how, hint)
                for how in (b"reset", b"closed")}
        assert len(said.intersection(lines)) == 1, lines
    assert fleet.stderr == b"2 servers: 0 ok, 0 error replies, 2 unreachable\n"


@pytest.mark.engines("gevent")  # the client is what is tested: no greencmd server here
@pytest.mark.parametrize("end", ["reset", "close"])
def test_an_end_during_the_handshake_is_a_failed_handshake_for_one_server_or_many(pki, end):
    # Not "a server with mutual TLS refused the certificate": that refusal comes after
    # the handshake. The fleet client says what the single one says (it once called a
    # reset here a refusal, and a close crashed it with a traceback).
    ca = str(pki / "ca.pem")
    with resetting_tls_server(pki, in_handshake=end) as port:
        single = run_greencmd("client", "--port", str(port), "--cafile", ca, "help")
        fleet = run_greencmd("client", "--port", str(port), "--cafile", ca, "--json", "help")
    assert single.returncode == 3
    prefix = b"greencmd: TLS handshake with 127.0.0.1:%d failed: " % port
    assert single.stderr.startswith(prefix), single.stderr
    why = single.stderr[len(prefix):].rstrip(b"\n").decode()
    assert fleet.returncode == 3
    assert json.loads(fleet.stdout)["error"] == "TLS failed: " + why
    assert b"Traceback" not in fleet.stderr
    assert "mutual TLS" not in why


@pytest.mark.engines("gevent")  # the client is what is tested: no greencmd server here
def test_the_interactive_client_names_a_reset_after_the_handshake_too(pki, tmp_path):
    ca = str(pki / "ca.pem")
    requests = tmp_path / "requests.txt"
    requests.write_bytes(b"help\n")
    with resetting_tls_server(pki) as port:
        # A request at once: its write meets the reset.
        typed = run_greencmd("client", "--port", str(port), "--cafile", ca, input=b"help\n")
        with requests.open("rb") as stdin:  # a file: sent by a thread of its own
            from_file = run_greencmd("client", "--port", str(port), "--cafile", ca, stdin=stdin)
        # Nothing typed yet, stdin left open: the server closes first, without a word
        # (the client used to exit 0 and say nothing, as if all were well).
        waiting = subprocess.Popen(
            [sys.executable, "-m", "greencmd", "client", "--port", str(port), "--cafile", ca],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=greencmd_env())
        try:
            waiting.wait(timeout=20)
        finally:
            waiting.kill()
            waiting.stdin.close()
    expected = [b"greencmd: 127.0.0.1:%d %s the connection without a reply (a server with "
                b"mutual TLS does that when it refuses the client certificate: give --cert "
                b"and --key signed by the CA it trusts)\n" % (port, how)
                for how in (b"reset", b"closed")]
    for result in (typed, from_file):
        assert (result.returncode, result.stdout) == (3, b"")
        assert result.stderr in expected, result.stderr
    assert (waiting.returncode, waiting.stdout.read()) == (3, b"")
    assert waiting.stderr.read() in expected


def served_certificate(server, pki) -> bytes:
    """The certificate (DER) the server presents to a new connection, checked against
    the test CA; the connection then says exit."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"help\n")
        assert read_until(tls, b"\n") == HELP
        return tls.getpeercert(binary_form=True)


def der(pem_file) -> bytes:
    """The first certificate of a PEM file, as DER."""
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


def test_sighup_loads_a_renewed_certificate_for_new_connections(start_server, pki, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes((pki / "server.pem").read_bytes())
    key.write_bytes((pki / "server.key").read_bytes())
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    assert served_certificate(server, pki) == der(pki / "server.pem")
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as kept:
        # Renewed in place (another certificate for the same names, with its chain).
        cert.write_bytes((pki / "chain.pem").read_bytes())
        key.write_bytes((pki / "chain.key").read_bytes())
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(lambda line: "TLS certificate reloaded from %s" % cert in line)
        assert served_certificate(server, pki) == der(pki / "chained.pem")
        # A renewal gone wrong: one line, and new connections keep the last good one.
        cert.write_text("not a certificate\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(lambda line: "Cannot reload TLS: cannot load the certificate %s"
                            % cert in line)
        assert served_certificate(server, pki) == der(pki / "chained.pem")
        # A session open all along goes on with what it began with.
        kept.sendall(b"help\n")
        assert read_until(kept, b"\n") == HELP
        assert kept.getpeercert(binary_form=True) == der(pki / "server.pem")
    assert server.stop() == 0
    assert not server.complaints()


@pytest.mark.engines(*[engine for engine in TLS_ENGINES if engine != "twisted"])
def test_sighup_reloads_the_certificate_in_every_worker(engine, pki, tmp_path):
    server = Server(["--engine", engine, "--port", "0", "--workers", "2", "--log-file", "",
                     "--lastlog-file", os.devnull, "--tls-cert", str(pki / "server.pem"),
                     "--tls-key", str(pki / "server.key")], tmp_path, greencmd_env())
    try:
        server.wait_for_count("Serving in worker process", 2)  # their handlers are in
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_count("TLS certificate reloaded from", 2)
        assert served_certificate(server, pki) == der(pki / "server.pem")
        assert server.stop() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    assert not server.complaints()
