"""``tartape extract``: members out of a file or URL through the archive's index, written
byte-identical with mode and mtime, never outside DIR; checked against nginx's access log."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from nginxutil import NGINX, nginx  # noqa: F401  (nginx: the fixture)
from tartapefs import MemoryTape, write_ratarmount_index
from tartapefs.cli import main

pytestmark = pytest.mark.index

MTIME = 1_700_000_000
needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (Debian package nginx)")


def fill(tape: MemoryTape) -> dict[str, tuple[bytes, int, int]]:
    """Entries of every kind into ``tape``; returns name -> (content, mode, mtime_ns)."""
    want = {}
    for i in range(40):
        name, data, mode = f"seg/{i:04d}.csv", b"%d;" % i * (i * 37), 0o600 + (i % 3) * 0o44
        tape.add_bytes(name, data, mode=mode, mtime=MTIME + i)
        want[name] = (data, mode, (MTIME + i) * 10**9)
    tape.add_dir("out", mode=0o750, mtime=MTIME - 5)
    long_name = "out/" + "n" * 150 + ".bin"  # a PAX header, with the mtime's fraction in it
    tape.add_bytes(long_name, b"L" * 3000, mtime=MTIME + 0.5)
    want[long_name] = (b"L" * 3000, 0o644, MTIME * 10**9 + 500_000_000)
    tape.add_stream("big.bin", 1 << 20, lambda: io.BytesIO(bytes(range(256)) * 4096))
    want["big.bin"] = (bytes(range(256)) * 4096, 0o644, MTIME * 10**9)
    return want


def memory_archive(path: Path, index_member: bool = True) -> dict[str, tuple[bytes, int, int]]:
    """The entries of fill() written by a MemoryTape to ``path``."""
    tape = MemoryTape(index_member=index_member, mtime=MTIME)
    want = fill(tape)
    with open(path, "wb") as out:
        tape.copy_to(out)
    return want


def with_sidecar(path: Path) -> None:
    """ratarmount's index next to an archive of memory_archive(path, index_member=False)."""
    tape = MemoryTape(mtime=MTIME)
    fill(tape)
    write_ratarmount_index(str(path) + ".index.sqlite", tape.members(), tape.total_size, MTIME)


def tar_with_index(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    """An archive by Python's tarfile, its index member appended with the csv module (our
    writer not involved): any names, even ones tartapefs would never write."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["name", "size", "header_offset", "body_offset", "type", "mtime"])
    with tarfile.open(path) as tar:
        for added in tar:
            kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
                    tarfile.LNKTYPE: "hardlink"}.get(added.type, "file")
            writer.writerow([added.name + ("/" if kind == "dir" else ""), added.size, added.offset,
                             added.offset_data, kind, int(added.mtime)])
    content = out.getvalue().encode()
    index = tarfile.TarInfo(path.stem + ".tarindex.csv")
    index.size = len(content)
    with tarfile.open(path, "a") as tar:
        tar.addfile(index, io.BytesIO(content))


def info(name: str, data: bytes = b"", kind=tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname, ti.mtime = kind, len(data), linkname, MTIME
    return ti, data


def check_written(dest: Path, want: dict[str, tuple[bytes, int, int]], names) -> None:
    for name in names:
        data, mode, mtime_ns = want[name]
        st = os.lstat(dest / name)
        assert (dest / name).read_bytes() == data, name
        assert stat.S_IMODE(st.st_mode) == mode and st.st_mtime_ns == mtime_ns, name


def leftovers(dest: Path) -> list[str]:
    return [p.name for p in dest.rglob("*") if p.name.startswith(".tartape-")]


def test_extract_from_a_file_is_byte_identical_with_mode_and_mtime(tmp_path, capsys):
    want = memory_archive(tmp_path / "a.tar")
    dest = tmp_path / "out"
    dest.mkdir()
    names = ["seg/0007.csv", "big.bin", next(n for n in want if n.startswith("out/n"))]
    assert main(["extract", str(tmp_path / "a.tar"), *names, "-C", str(dest)]) == 0
    check_written(dest, want, names)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(names)
    assert capsys.readouterr().err == ""  # found through the index member: no warning


def test_globs_and_folders_select_members_and_folders_get_their_mode_last(tmp_path):
    want = memory_archive(tmp_path / "a.tar")
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["extract", str(tmp_path / "a.tar"), "seg/000?.csv", "out", "-C", str(dest)]) == 0
    chosen = [n for n in want if n.startswith("seg/000") or n.startswith("out/")]
    check_written(dest, want, chosen)
    assert len(list((dest / "seg").iterdir())) == 10
    st = os.stat(dest / "out")
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == (MTIME - 5) * 10**9
    assert leftovers(dest) == []


def test_list_reads_the_index_alone(tmp_path, capsys):
    want = memory_archive(tmp_path / "a.tar")
    assert main(["extract", str(tmp_path / "a.tar"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == [*list(want)[:40], "out/", *list(want)[40:]]


@pytest.mark.parametrize("evil", ["../evil", "/tmp/evil-absolute", "a/../../evil"])
def test_names_that_would_leave_dir_are_refused_and_nothing_is_written(tmp_path, capsys, evil):
    tar_with_index(tmp_path / "evil.tar", [info("fine.txt", b"ok"), info(evil, b"pwned")])
    dest = tmp_path / "deep" / "out"
    dest.mkdir(parents=True)
    assert main(["extract", str(tmp_path / "evil.tar"), "*", "-C", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "nothing was extracted" in err
    assert list(dest.iterdir()) == [] and not (tmp_path / "deep" / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_a_symlink_in_dir_is_never_followed(tmp_path, capsys):
    memory_archive(tmp_path / "a.tar")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "seg").symlink_to(outside)
    assert main(["extract", str(tmp_path / "a.tar"), "seg/0001.csv", "-C", str(dest)]) == 1
    assert "symlink" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_a_symlink_the_archive_itself_makes_is_never_followed(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    tar_with_index(tmp_path / "trick.tar", [info("s", kind=tarfile.SYMTYPE, linkname=str(outside)),
                                            info("s/planted", b"pwned")])
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["extract", str(tmp_path / "trick.tar"), "*", "-C", str(dest)]) == 1
    assert "never followed" in capsys.readouterr().err
    assert list(outside.iterdir()) == [] and os.readlink(dest / "s") == str(outside)


def test_hard_links_are_links_when_both_are_extracted_else_copies(tmp_path):
    tar_with_index(tmp_path / "links.tar", [info("a.txt", b"shared"), info("b.txt", kind=tarfile.LNKTYPE,
                                                                         linkname="a.txt")])
    both, alone = tmp_path / "both", tmp_path / "alone"
    both.mkdir(), alone.mkdir()
    assert main(["extract", str(tmp_path / "links.tar"), "*.txt", "-C", str(both)]) == 0
    assert os.stat(both / "a.txt").st_ino == os.stat(both / "b.txt").st_ino
    assert main(["extract", str(tmp_path / "links.tar"), "b.txt", "-C", str(alone)]) == 0
    assert (alone / "b.txt").read_bytes() == b"shared" and not (alone / "a.txt").exists()


def test_an_existing_file_is_replaced_whole(tmp_path):
    want = memory_archive(tmp_path / "a.tar")
    dest = tmp_path / "out"
    (dest / "seg").mkdir(parents=True)
    (dest / "seg" / "0003.csv").write_bytes(b"old content, longer than the new one" * 10)
    os.link(dest / "seg" / "0003.csv", tmp_path / "other-link")
    assert main(["extract", str(tmp_path / "a.tar"), "seg/0003.csv", "-C", str(dest)]) == 0
    check_written(dest, want, ["seg/0003.csv"])
    assert (tmp_path / "other-link").read_bytes().startswith(b"old content")  # renamed over, not rewritten
    assert leftovers(dest) == []


def test_a_forged_index_is_an_error_never_other_bytes(tmp_path, capsys):
    path = tmp_path / "forged.tar"
    tar_with_index(path, [info("a.txt", b"A" * 600), info("b.txt", b"B" * 600)])
    data = bytearray(path.read_bytes())
    start = data.index(b"name,size")
    first, second = data.index(b"a.txt,", start), data.index(b"b.txt,", start)
    data[first : first + 5], data[second : second + 5] = b"x.txt", b"a.txt"  # a.txt -> b.txt's bytes
    path.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["extract", str(path), "a.txt", "-C", str(dest)]) == 1
    assert "disagree" in capsys.readouterr().err
    assert list(dest.iterdir()) == []


def test_without_an_index_member_the_ratarmount_sidecar_or_a_scan_finds_members(tmp_path, capsys):
    want = memory_archive(tmp_path / "plain.tar", index_member=False)
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["extract", str(tmp_path / "plain.tar"), "seg/0011.csv", "-C", str(dest)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reading the whole archive" in err
    check_written(dest, want, ["seg/0011.csv"])
    # With ratarmount's index next to it: no warning, the same bytes.
    with_sidecar(tmp_path / "plain.tar")
    assert main(["extract", str(tmp_path / "plain.tar"), "seg/0012.csv", "big.bin", "-C", str(dest)]) == 0
    assert capsys.readouterr().err == ""
    check_written(dest, want, ["seg/0012.csv", "big.bin"])


@needs_nginx
def test_extract_from_nginx_reads_little_more_than_the_member(world_dir, nginx, capsys):  # noqa: F811
    tape = MemoryTape(index_member=True, mtime=MTIME)
    for i in range(5000):
        tape.add_bytes(f"d{i // 1000}/f{i:05d}.txt", b"%05d" % i * 20)
    big = bytes(range(251)) * 4178  # about 1 MiB
    tape.add_bytes("d2/wanted.bin", big, mode=0o640)
    for i in range(5000, 7000):
        tape.add_bytes(f"d9/f{i:05d}.txt", b"%05d" % i * 20)
    with open(world_dir / "dataset.tar", "wb") as out:
        tape.copy_to(out)
    index_size = list(tape.members())[-1].size
    served = nginx(world_dir, access_log=True)
    dest = world_dir / "out"
    dest.mkdir()
    url = f"{served.url}/dataset.tar"
    assert main(["extract", url, "d2/wanted.bin", "-C", str(dest)]) == 0
    assert (dest / "d2" / "wanted.bin").read_bytes() == big
    assert stat.S_IMODE(os.stat(dest / "d2" / "wanted.bin").st_mode) == 0o640
    requests = served.requests(at_least=len(big) + index_size)
    assert all(status == 206 for status, _, _ in requests), requests
    sent = sum(n for _, n, _ in requests)
    # The bound is 2 MiB + the index member; the tail and the headers cost far less.
    assert len(big) + index_size <= sent <= len(big) + index_size + 128 * 1024, (sent, requests)
    assert len(requests) <= 6
    assert main(["extract", url, "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7001


@needs_nginx
def test_extract_over_http_uses_the_ratarmount_sidecar(world_dir, nginx, capsys):  # noqa: F811
    want = memory_archive(world_dir / "plain.tar", index_member=False)
    with_sidecar(world_dir / "plain.tar")
    served = nginx(world_dir, access_log=True)
    dest = world_dir / "out"
    dest.mkdir()
    assert main(["extract", f"{served.url}/plain.tar", "big.bin", "-C", str(dest)]) == 0
    assert capsys.readouterr().err == ""
    check_written(dest, want, ["big.bin"])
    sidecar = os.path.getsize(world_dir / "plain.tar.index.sqlite")
    assert sum(n for _, n, _ in served.requests(at_least=1 << 20)) <= (1 << 20) + sidecar + 128 * 1024


def test_a_server_without_range_support_is_one_line(tmp_path, capsys):
    memory_archive(tmp_path / "a.tar")
    class Quiet(http.server.SimpleHTTPRequestHandler):  # Python's own server: no Range support
        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, *args) -> None:
            pass  # the client hangs up on the whole file: that is the point

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.tar"
        assert main(["extract", url, "big.bin", "-C", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "does not serve byte ranges" in err
        assert main(["extract", url + ".missing", "big.bin", "-C", str(tmp_path)]) == 1
        assert "404" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "big.bin").exists()


def test_a_missing_member_or_archive_is_one_line(tmp_path, capsys):
    memory_archive(tmp_path / "a.tar")
    assert main(["extract", str(tmp_path / "a.tar"), "nope*", "-C", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "tartape: nope*: not found in the archive\n"
    assert main(["extract", str(tmp_path / "none.tar"), "x"]) == 1
    assert "cannot open the archive" in capsys.readouterr().err


# What `tartape extract` must not load: the record side, the index and read path of
# recordings, SQLite, the C extension, and what only the daemon uses. Each costs start-up
# time on every run of a command that only reads an archive.
NOT_FOR_EXTRACT = ("tartapefs.record", "tartapefs.index", "tartapefs.layout", "tartapefs.reader",
                   "tartapefs.tape", "tartapefs.native", "sqlite3", "logging.handlers", "dataclasses",
                   "secrets", "hashlib", "pyfuse3", "trio")


def test_extract_starts_without_the_recording_side(tmp_path):
    want = memory_archive(tmp_path / "a.tar")
    (tmp_path / "out").mkdir()
    code = ("import sys\nfrom tartapefs.cli import main\n"
            "code = main(['extract', sys.argv[1], 'big.bin', '-C', sys.argv[2]])\n"
            "print(' '.join(sorted(sys.modules)))\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.tar"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    check_written(tmp_path / "out", want, ["big.bin"])
    loaded = done.stdout.split()
    assert "tartapefs.extract" in loaded and "tarfile" in loaded  # the list is the real one
    assert [m for m in NOT_FOR_EXTRACT if m in loaded] == []
