"""comhash: real files of every kind, hashed on the server's thread pool."""

import os
import socket

import pytest
from conftest import BIG, HELP, hash_line, memory_kib, read_all, read_until, sha1_of_file

from greencmd.core import protocol


def test_hash_of_a_file(server, tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello\n")
    assert server.talk(b"comhash %s\n" % bytes(path)) == hash_line(b"hello\n")


def test_hash_of_an_empty_file(server, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert server.talk(b"comhash %s\n" % bytes(tmp_path / "empty")) == hash_line(b"")


def test_relative_path_is_taken_from_the_servers_directory(server, tmp_path):
    (tmp_path / "rel.txt").write_bytes(b"rel")
    assert server.talk(b"comhash rel.txt\n") == hash_line(b"rel")


def test_no_path(server):
    assert server.talk(b"comhash\ncomhash    \n") == b"please provide a path.\n" * 2


def test_file_names_with_spaces_and_non_utf8_bytes(server, tmp_path):
    for name in (b"my file.txt", b"  lead and trail x", b"caf\xe9 \xff\xfe.bin", b"tab\there"):
        path = bytes(tmp_path) + b"/" + name
        with open(path, "wb") as f:
            f.write(name)
        assert server.talk(b"comhash " + path + b"\n") == hash_line(name)


def test_missing_file_and_directory_errors_name_the_path(server, tmp_path):
    missing = bytes(tmp_path / "nope")
    assert server.talk(b"comhash %s\n" % missing) == (
        b"An error occured: [Errno 2] No such file or directory: '%s'\n" % missing)
    assert server.talk(b"comhash %s\n" % bytes(tmp_path)) == (
        b"An error occured: [Errno 21] Is a directory: '%s'\n" % bytes(tmp_path))
    server.wait_for_count("Lost client connection", 2)
    assert server.count_log("Traceback") == 0


def test_missing_non_utf8_name_is_reported_escaped(server, tmp_path):
    missing = bytes(tmp_path) + b"/\xff"
    reply = server.talk(b"comhash " + missing + b"\n")
    assert reply == protocol.error(
        "[Errno 2] No such file or directory: %r" % os.fsdecode(missing))
    assert reply.isascii()


def test_fifo_is_never_opened(server, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert server.talk(b"comhash %s\nhelp\n" % bytes(fifo)) == (
        b"An error occured: Not a regular file (a FIFO): '%s'\n" % bytes(fifo) + HELP)


def test_device_is_never_opened(server):
    assert server.talk(b"comhash /dev/zero\n") == (
        b"An error occured: Not a regular file (a character device): '/dev/zero'\n")


def test_symlink_to_a_file_is_followed(server, tmp_path):
    (tmp_path / "target").write_bytes(b"t")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert server.talk(b"comhash %s\n" % bytes(tmp_path / "link")) == hash_line(b"t")


@pytest.fixture
def rooted(start_server, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in.txt").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inner").symlink_to(root / "sub" / "in.txt")
    return start_server("--hash-root", str(root)), root


def test_hash_root_allows_files_inside(rooted):
    server, root = rooted
    assert server.talk(b"comhash %s/sub/in.txt\n" % bytes(root)) == hash_line(b"inside")
    assert server.talk(b"comhash sub/in.txt\n") == hash_line(b"inside")
    assert server.talk(b"comhash %s/inner\n" % bytes(root)) == hash_line(b"inside")


@pytest.mark.parametrize("path", [b"{tmp}/secret", b"../secret", b"{root}/escape",
                                  b"{root}/sub/../../secret", b"/etc/hostname", b"/"])
def test_hash_root_refuses_paths_outside(rooted, tmp_path, path):
    server, root = rooted
    path = path.replace(b"{tmp}", bytes(tmp_path)).replace(b"{root}", bytes(root))
    assert server.talk(b"comhash " + path + b"\n") == (
        b"An error occured: " + path + b": outside the allowed root\n")


def test_slow_hash_does_not_hold_up_other_sessions(server, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(BIG)
    slow = server.connect(timeout=60)
    slow.sendall(b"comhash %s\n" % bytes(big))
    server.wait_for_log(lambda line: ": comhash" in line)
    # help is answered on another connection while the 1 GiB hash is still running,
    assert server.talk(b"help\n") == HELP
    slow.setblocking(False)
    with pytest.raises(BlockingIOError):
        slow.recv(1)
    slow.setblocking(True)
    slow.settimeout(60)
    # and the hash arrives afterwards, right, with flat memory on the server.
    assert read_until(slow, b"\n") == sha1_of_file(big)
    slow.close()
    assert memory_kib(server.proc.pid, "VmHWM") < 200 * 1024



def test_concurrent_hashes_each_get_their_own_reply(start_server, tmp_path):
    server = start_server("--max-clients", "40", "--hash-threads", "3")
    files = []
    for i in range(40):
        path = tmp_path / ("f%d" % i)
        path.write_bytes(os.urandom(1000 + i * 5000))
        files.append(path)
    socks = [server.connect(timeout=30) for _ in files]
    for sock, path in zip(socks, files, strict=True):
        sock.sendall(b"comhash %s\ncomhash %s\n" % (bytes(path), bytes(path)))
        sock.shutdown(socket.SHUT_WR)
    for sock, path in zip(socks, files, strict=True):
        assert read_all(sock) == hash_line(path.read_bytes()) * 2
        sock.close()
