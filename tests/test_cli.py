"""The ``tartape`` console script, run as a subprocess: commands, their output
against the API and the bytes, and user errors as one stderr line."""

from __future__ import annotations

import io
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mountutil import run_as_nobody
from tartapefs import Tape
from tartapefs.errors import show_path
from trees import archive_of, build_small_tree, content

pytestmark = pytest.mark.index

TARTAPE = Path(sys.executable).parent / "tartape"


def utf8() -> dict[str, str]:
    """The environment of this test (hot_path may have set TARTAPEFS_PURE), in a UTF-8 locale."""
    return {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}


def tartape(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TARTAPE, *map(os.fsencode, args)], capture_output=True, env=env or utf8())


def ok(*args: str | Path, env: dict | None = None) -> bytes:
    proc = tartape(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    return proc.stdout


def assert_user_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode != 0
    assert b"Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.fixture
def recorded(small_tree: Path):
    ok("record", small_tree)
    tape = Tape.discover(str(small_tree))
    return small_tree, tape, archive_of(tape)


def names_in(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name for m in tf.getmembers()}


# --- commands ----------------------------------------------------------------------------


def test_record_writes_the_index_inside_the_source_and_reports_it(small_tree):
    out = ok("record", small_tree).decode()
    index = small_tree / ".tartape" / "index.db"
    assert index.is_file() and str(index) in out
    tape = Tape.discover(str(small_tree))
    assert f"{tape.member_count} members" in out and str(tape.total_size) in out


@pytest.mark.usefixtures("hot_path")
def test_stream_writes_the_archive_to_stdout(recorded):
    src, tape, archive = recorded
    assert ok("stream", src) == archive
    assert "data/sub/c.txt" in names_in(archive)


@pytest.mark.usefixtures("hot_path")
def test_stream_records_first_when_there_is_no_index(small_tree):
    data = ok("stream", small_tree)
    assert data == archive_of(Tape.discover(str(small_tree)))
    assert "data/a.txt" in names_in(data)


@pytest.mark.parametrize("where", [0, 1, 511, 512, 513, -1024, -1, "end"])
@pytest.mark.usefixtures("hot_path")
def test_stream_from_a_start_offset_resumes_at_that_byte(recorded, where, tmp_path):
    src, tape, archive = recorded
    k = tape.total_size if where == "end" else where % tape.total_size
    assert ok("stream", src, "--start-offset", str(k)) == archive[k:]
    ok("stream", src, "--start-offset", str(k), "-o", tmp_path / "out.tar")
    assert (tmp_path / "out.tar").read_bytes() == archive[k:]
    assert not (tmp_path / "out.tar.part").exists()


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_ls_lists_one_line_per_member_with_archive_offset_and_size(hard_tree, hard_tape, locale):
    out = ok("ls", hard_tree.root, env={**os.environ, "LC_ALL": locale})
    lines = out.splitlines()
    members = list(hard_tape.members())
    assert len(lines) == len(members)
    for line, m in zip(lines, members):
        archive, offset, size, name = line.split(b"\t", 3)
        assert archive == b"dataset.tar"
        assert (int(offset), int(size)) == (m.offset, m.size)
        assert name.decode() == show_path(m.name)


def test_locate_prints_header_and_body_ranges_and_an_http_range(recorded):
    src, tape, archive = recorded
    out = ok("locate", src, "data/sub/c.txt").decode()
    a, b = map(int, re.search(r"Range: bytes=(\d+)-(\d+)", out).groups())
    assert archive[a:b + 1] == content(b"sub/c.txt", 2000)
    h0, h1 = map(int, re.search(r"header\t(\d+)-(\d+)", out).groups())
    assert h1 + 1 == a and tarfile.TarInfo.frombuf(archive[h1 - 511:h1 + 1], "utf-8", "strict").size == 2000
    assert h0 == tape.locate("data/sub/c.txt").offset


def test_every_name_ls_shows_is_accepted_back_by_locate(hard_tree, hard_tape):
    """Names that are not UTF-8 or hold a newline, shown escaped on one line (\\xff, \\n, \\\\),
    never as the \\udcff of a Python surrogate; locate takes each one back."""
    shown = [line.split(b"\t", 3)[3].decode() for line in ok("ls", hard_tree.root).splitlines()]
    assert not [name for name in shown if "\\udc" in name]
    assert any("\\x" in name for name in shown) and any("\\n" in name for name in shown)
    for name, m in zip(shown, hard_tape.members()):
        out = ok("locate", hard_tree.root, name).decode()
        assert f"header\t{m.offset}-{m.body_offset - 1}\t" in out, name


def test_locate_a_non_utf8_member_by_its_raw_name(hard_tree, hard_tape):
    out = ok("locate", hard_tree.root, b"data/names/\xff\xfe")
    m = hard_tape.locate(b"data/names/\xff\xfe")
    assert f"Range: bytes={m.body_offset}-{m.body_end - 1}".encode() in out


def test_verify_passes_then_lists_a_changed_member_and_exits_1(recorded):
    src, _, _ = recorded
    ok("verify", src)
    with open(src / "sub" / "c.txt", "ab") as fh:
        fh.write(b"x")
    proc = tartape("verify", src)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"data/sub/c.txt" in proc.stdout and b"data/a.txt" not in proc.stdout


def test_verify_lists_a_changed_non_utf8_member(hard_tree, tmp_path):
    src = tmp_path / "copy"
    subprocess.run(["cp", "-a", hard_tree.root, src], check=True)
    ok("record", src, "--index", tmp_path / "i.db")
    with open(os.path.join(os.fsencode(src), b"names/\xff\xfe"), "ab") as fh:
        fh.write(b"x")
    proc = tartape("verify", src, "--index", tmp_path / "i.db")
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and b"names/" in proc.stdout


def test_info_shows_size_members_fingerprint_and_index(recorded):
    src, tape, _ = recorded
    fields = dict(line.split("\t", 1) for line in ok("info", src).decode().splitlines())
    assert int(fields["size"]) == tape.total_size and int(fields["members"]) == tape.member_count
    assert fields["fingerprint"] == tape.fingerprint and fields["index"] == tape.index_path


def test_record_options_prefix_keep_owner_and_exclude(small_tree, tmp_path):
    os.chown(small_tree / "b.txt", 4321, 8765)
    ok("record", small_tree, "--prefix", "", "--keep-owner", "--exclude", "*.txt")
    data = ok("stream", small_tree)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert {m.name for m in tf.getmembers()} == {"sub", "link"}
    ok("record", small_tree, "--prefix", "X", "--keep-owner")
    with tarfile.open(fileobj=io.BytesIO(ok("stream", small_tree))) as tf:
        assert (tf.getmember("X/b.txt").uid, tf.getmember("X/b.txt").gid) == (4321, 8765)


def test_an_index_inside_the_source_but_outside_tartape_dir_is_refused(small_tree):
    """Writing SRC/idx.db (and its temporary file) would change SRC's mtime, a byte of the archive."""
    index = small_tree / "idx.db"
    proc = tartape("record", small_tree, "--index", index)
    assert proc.returncode != 0 and not index.exists()
    assert len(proc.stderr.splitlines()) == 1 and b"inside the source folder" in proc.stderr
    # its own folder SRC/.tartape is fine: it is left out of the archive
    ok("record", small_tree, "--index", small_tree / ".tartape" / "other.db")
    ok("verify", small_tree, "--index", small_tree / ".tartape" / "other.db")


def test_record_warns_about_a_fifo_and_leaves_it_out(small_tree):
    os.mkfifo(small_tree / "pipe")
    proc = tartape("record", small_tree)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
    # ustar has a type for FIFOs: the warning says why it is left out, not that tar cannot.
    assert proc.stderr.decode().splitlines() == [
        "tartape: WARNING: pipe: skipped, a FIFO (an archive holds files, folders and links: "
        "a FIFO's data is never in the file system to read)"]
    assert "data/pipe" not in names_in(ok("stream", small_tree))


@pytest.mark.usefixtures("hot_path")
def test_stream_of_a_changed_source_fails_naming_the_member_and_leaves_no_file(recorded, tmp_path):
    src, _, archive = recorded
    os.truncate(src / "sub" / "c.txt", 10)
    proc = tartape("stream", src)
    assert_user_error(proc)
    assert b"data/sub/c.txt" in proc.stderr and archive.startswith(proc.stdout)
    assert len(proc.stdout) < len(archive)
    assert_user_error(tartape("stream", src, "-o", tmp_path / "out.tar"))
    assert list(tmp_path.glob("out.tar*")) == []


@pytest.mark.usefixtures("hot_path")
def test_stream_into_a_pipe_closed_early_ends_quietly(hard_tree, hard_tape):
    proc = subprocess.run(f"'{TARTAPE}' stream '{hard_tree.root}' | head -c 100 >/dev/null; "
                          "echo ${PIPESTATUS[0]} >&2", shell=True, executable="/bin/bash",
                          capture_output=True, env=utf8())
    assert b"Traceback" not in proc.stderr and proc.stderr.split()[-1] in (b"0", b"141")


@pytest.mark.parametrize("command", ["ls", "verify", "stream", "info"])
def test_a_reader_that_closes_the_pipe_early_ends_the_command_as_unix_tools_end(hard_tree, hard_tape, command):
    """`tartape ls SRC | head -1`: quietly, with the status a shell gives cat (128 + SIGPIPE),
    not a message and exit 1 (which for verify would mean "members changed")."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        proc = subprocess.run([TARTAPE, command, hard_tree.root], stdout=write_end, stderr=subprocess.PIPE,
                              env=utf8())
    finally:
        os.close(write_end)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    assert proc.stderr == b""


def test_stream_refuses_to_write_the_archive_to_a_terminal(recorded):
    src = recorded[0]
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([TARTAPE, "stream", src], stdout=terminal, stderr=subprocess.PIPE, env=utf8())
        os.set_blocking(controller, False)
        try:
            shown = os.read(controller, 1 << 16)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 1 and shown == b""
    assert proc.stderr.decode().splitlines() == [
        "tartape: stream: refusing to write the archive to a terminal (use -o FILE, or redirect stdout)"]


def test_counts_of_one_are_singular(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    out = ok("record", src, "--prefix", "").decode()
    assert out.startswith("recorded 1 member, 2048 bytes, fingerprint "), out
    assert ok("verify", src).decode() == "ok: 1 member, all as recorded\n"


def test_info_shows_the_tape_mtime_as_a_date_and_its_epoch_seconds(recorded):
    src, tape, _ = recorded
    os.utime(src / "a.txt", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    lines = dict(line.split("\t", 1) for line in ok("info", src).decode().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+\)", lines["mtime"]), lines["mtime"]
    assert lines["mtime"].endswith(f"({tape.mtime})")


@pytest.mark.parametrize("command", ["ls", "info", "verify", "locate"])
def test_a_folder_that_does_not_exist_is_named_and_recording_it_is_not_suggested(tmp_path, command):
    proc = tartape(command, tmp_path / "nonexistent", *(["x"] if command == "locate" else []))
    assert_user_error(proc)
    assert proc.stderr.decode() == f"tartape: {tmp_path / 'nonexistent'}: no such directory\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_file_this_user_may_not_read_is_reported_as_unreadable_not_as_changed(world_dir):
    src = build_small_tree(world_dir)
    (src / "secret.txt").write_bytes(b"s" * 100)
    os.chmod(src / "secret.txt", 0o600)  # root's, as recorded
    index, out = world_dir / "index.db", world_dir / "out"
    ok("record", src, "--index", index)
    os.chmod(index, 0o644)
    out.mkdir(mode=0o777)
    os.chmod(out, 0o777)
    streamed = run_as_nobody("tartapefs.cli", "stream", src, "--index", index, "-o", out / "a.tar")
    assert streamed.returncode == 1 and "Traceback" not in streamed.stderr
    assert streamed.stderr.splitlines() == [
        "tartape: data/secret.txt: source cannot be read by this user: permission denied (Permission denied)"]
    verified = run_as_nobody("tartapefs.cli", "verify", src, "--index", index)
    assert verified.returncode == 1
    assert verified.stdout.splitlines() == ["unreadable\tdata/secret.txt\tpermission denied (Permission denied)"]
    assert verified.stderr.splitlines() == ["tartape: 1 file cannot be read by this user"]


# --- user errors: one line on stderr, non-zero exit, no traceback ------------------------


@pytest.mark.parametrize("command", ["record", "stream", "ls", "info", "verify"])
def test_a_missing_source_is_a_one_line_error(tmp_path, command):
    assert_user_error(tartape(command, tmp_path / "missing"))


@pytest.mark.parametrize("command", ["record", "stream"])
def test_a_source_that_is_a_file_is_a_one_line_error(tmp_path, command):
    (tmp_path / "file").write_bytes(b"x")
    assert_user_error(tartape(command, tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("command", ["record", "stream"])
def test_an_unreadable_source_is_a_one_line_error(world_dir, command):
    src = world_dir / "data"
    src.mkdir(mode=0o700)  # root's; nobody may not list it
    (src / "a.txt").write_bytes(b"root only")
    proc = run_as_nobody("tartapefs.cli", command, src, "--index", world_dir / "index.db")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"tartape: {src}: permission denied"]
    assert proc.stdout == "" and sorted(os.listdir(world_dir)) == ["data"]


@pytest.mark.parametrize("args", [["--frobnicate", "ls", "SRC"], ["ls", "SRC", "--frobnicate"],
                                  ["stream", "SRC", "-x"], ["frobnicate", "SRC"]])
def test_an_unknown_option_or_command_is_a_one_line_error_naming_it(recorded, args):
    proc = tartape(*(str(recorded[0]) if a == "SRC" else a for a in args))
    assert_user_error(proc)
    assert proc.returncode == 2
    assert (b"-x" if "-x" in args else b"frobnicate") in proc.stderr
    assert proc.stdout == b""


@pytest.mark.parametrize("offset", ["-1", "past_end", "abc"])
def test_a_start_offset_outside_the_tape_is_a_one_line_error(recorded, offset):
    src, tape, _ = recorded
    offset = str(tape.total_size + 1) if offset == "past_end" else offset
    proc = tartape("stream", src, "--start-offset", offset)
    assert_user_error(proc)
    assert proc.stdout == b""


@pytest.mark.parametrize("prefix", ["../x", "a/../b", "."])
def test_a_prefix_with_dot_parts_is_a_one_line_error(small_tree, prefix):
    assert_user_error(tartape("record", small_tree, "--prefix", prefix))
    assert not (small_tree / ".tartape" / "index.db").exists()


def test_locate_an_unknown_member_is_a_one_line_error(recorded):
    assert_user_error(tartape("locate", recorded[0], "data/no/such"))


@pytest.mark.parametrize("command", ["info", "ls", "stream", "verify", "locate"])
def test_a_corrupted_index_is_a_one_line_error(recorded, command):
    src, tape, _ = recorded
    Path(tape.index_path).write_bytes(b"garbage " * 1000)
    extra = ["data/a.txt"] if command == "locate" else []
    proc = tartape(command, src, *extra)
    assert_user_error(proc)
    assert proc.stdout == b""


@pytest.mark.parametrize("command", ["ls", "stream", "verify", "info"])
def test_an_index_damaged_in_the_middle_is_a_one_line_error(hard_tree, tmp_path, command):
    index = tmp_path / "i.db"
    ok("record", hard_tree.root, "--index", index)
    with open(index, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"Z" * (os.path.getsize(index) - 8192))
    assert_user_error(tartape(command, hard_tree.root, "--index", index))


def test_info_refuses_an_index_with_one_damaged_page(hard_tree, tmp_path):
    """`info` reads only the tape's metadata: the damage check at open must catch the rest."""
    index = tmp_path / "i.db"
    ok("record", hard_tree.root, "--index", index)
    pages = os.path.getsize(index) // 4096
    assert pages >= 4
    with open(index, "r+b") as fh:
        fh.seek(pages // 2 * 4096)
        fh.write(b"Z" * 4096)
    proc = tartape("info", hard_tree.root, "--index", index)
    assert_user_error(proc)
    assert proc.stdout == b"" and b"damaged index" in proc.stderr


def test_an_index_of_another_folder_is_a_one_line_error(recorded, tmp_path):
    src, tape, _ = recorded
    other = tmp_path / "other"
    other.mkdir()
    assert_user_error(tartape("info", other, "--index", tape.index_path))


@pytest.mark.parametrize("command", ["info", "ls", "stream", "verify"])
def test_a_foreign_sqlite_file_as_index_is_a_one_line_error(small_tree, tmp_path, command):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table photos (path text, taken integer)")
    db.close()
    proc = tartape(command, small_tree, "--index", foreign)
    assert_user_error(proc)
    assert sqlite3.connect(foreign).execute("select name from sqlite_master").fetchall() == [("photos",)]
