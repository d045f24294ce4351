"""The archive as independent readers see it: Python tarfile, GNU tar and bsdtar.

Listing and extraction of the hard tree (tests/trees.py), compared with the
source; an 8 GiB + 1 byte sparse member listed and sampled without ever
materializing it.
"""

from __future__ import annotations

import gc
import io
import math
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tartapefs import TapeReader
from trees import (SPARSE_SIZE, build_sparse_tree, expected_names, record, scratch_dir, snapshot,
                   tree_differences)

pytestmark = pytest.mark.index

C_LOCALE = {**os.environ, "LC_ALL": "C"}
# GNU tar 1.34 does not know the PAX keyword hdrcharset (then uses the raw bytes, as wanted).
ALLOWED_GNU_WARNING = re.compile(rb"^tar: Ignoring unknown extended header keyword .hdrcharset.$")
_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b", b"f": b"\f",
            b"v": b"\v", b"\\": b"\\", b" ": b" ", b'"': b'"', b"'": b"'", b"?": b"?"}


def unescape(name: bytes) -> bytes:
    """Undo the C-style escaping that GNU tar and bsdtar apply to listed names."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i:i + 1] != b"\\":
            out += name[i:i + 1]
            i += 1
        elif name[i + 1:i + 2].isdigit():
            out.append(int(name[i + 1:i + 4], 8))
            i += 4
        else:
            out += _ESCAPES[name[i + 1:i + 2]]
            i += 2
    return bytes(out)


def run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, env=C_LOCALE)


def unexpected_stderr(proc: subprocess.CompletedProcess) -> list[bytes]:
    return [ln for ln in proc.stderr.splitlines() if not ALLOWED_GNU_WARNING.match(ln)]


def tarfile_name(member: tarfile.TarInfo) -> bytes:
    """The stored name: tarfile strips a directory's trailing '/'."""
    return os.fsencode(member.name) + (b"/" if member.isdir() else b"")


@pytest.fixture(scope="module")
def archive_file(hard_archive: bytes, tmp_path_factory) -> Path:
    with scratch_dir(tmp_path_factory, "archive") as base:
        path = base / "hard.tar"
        path.write_bytes(hard_archive)
        yield path


# --- Python tarfile ----------------------------------------------------------------------


def test_tarfile_lists_exactly_the_source_entries_tar_can_carry(hard_tree, archive_file):
    with tarfile.open(archive_file) as tf:
        names = [tarfile_name(m) for m in tf.getmembers()]
    assert len(names) == len(set(names)), "a member appears twice"
    assert set(names) == expected_names(hard_tree.root)
    assert not any(n.startswith(hard_tree.name + b"/" + hard_tree.fifo) for n in names)
    assert not any(b"/.tartape" in n for n in names)


def test_tarfile_reads_contents_links_modes_and_mtimes_as_in_the_source(hard_tree, archive_file):
    source = snapshot(hard_tree.root)
    first_of_inode: dict[tuple[int, int], bytes] = {}
    with tarfile.open(archive_file) as tf:
        for m in tf.getmembers():
            rel = tarfile_name(m).rstrip(b"/")[len(hard_tree.name) + 1:]
            src = source[rel]
            assert (m.uid, m.gid) == (0, 0), m.name
            # whole seconds in ustar; a PAX header carries the exact time (tarfile: a float)
            assert math.floor(m.mtime) == src.mtime, m.name
            if src.kind == "symlink":
                assert m.issym() and os.fsencode(m.linkname) == src.target
                continue
            assert m.mode == src.mode, m.name
            if src.kind == "dir":
                assert m.isdir()
            elif src.inode in first_of_inode:
                assert m.islnk() and os.fsencode(m.linkname) == first_of_inode[src.inode]
            else:
                first_of_inode[src.inode] = tarfile_name(m)
                assert m.isfile() and m.size == src.size
                assert tf.extractfile(m).read() == hard_tree.files[rel]


def test_names_are_relative_prefixed_and_directories_end_in_slash(hard_tree, archive_file):
    proc = run("tar", "-tf", archive_file, "--quoting-style=escape")
    names = [unescape(ln) for ln in proc.stdout.splitlines()]
    assert set(names) == expected_names(hard_tree.root)
    for name in names:
        assert name.split(b"/")[0] == hard_tree.name and not name.startswith(b"/")
        assert b".." not in name.split(b"/")
    seen: set[bytes] = set()
    for name in names:  # parents before children
        parent = name.rstrip(b"/").rpartition(b"/")[0]
        assert not parent or parent + b"/" in seen, name
        seen.add(name)


def test_anonymized_owners_have_uid_gid_zero_and_one_name(archive_file):
    with tarfile.open(archive_file) as tf:
        owners = {(m.uid, m.gid, m.uname, m.gname) for m in tf.getmembers()}
    assert len(owners) == 1 and next(iter(owners))[:2] == (0, 0)


def test_pax_records_appear_exactly_where_ustar_cannot_hold_the_field(hard_tape, hard_archive):
    """The tree must reach every PAX case, and plain members must stay plain ustar."""
    def header(name: bytes) -> bytes:
        m = hard_tape.locate(b"data/" + name)
        return hard_archive[m.offset:m.body_offset]

    assert b" hdrcharset=BINARY\n" in header(b"names/" + b"bin\xff\xfe" * 26 + b"/")  # 131-byte component
    assert b" mtime=-1000000000\n" in header(b"times/before_1970")
    assert b" mtime=9000000000.000000005\n" in header(b"times/after_2242")  # exact, to the ns
    assert b" linkpath=" + b"t" * 150 + b"\n" in header(b"links/long_target")
    assert b" path=data/names/" + b"c" * 200 + b"\n" in header(b"names/" + b"c" * 200)
    for plain in (b"sizes/size_513", b"names/\xff\xfe", b"long/" + b"a" * 60 + b"/" + b"b" * 60):
        assert len(header(plain)) == 512, plain


# --- GNU tar and bsdtar ------------------------------------------------------------------


@pytest.mark.parametrize("tar", ["tar", "bsdtar"])
def test_tar_lists_every_member_verbosely_without_complaint(tar, hard_tree, archive_file):
    proc = run(tar, "-tvf", archive_file)
    assert proc.returncode == 0, proc.stderr
    assert unexpected_stderr(proc) == []
    entries = len(expected_names(hard_tree.root))
    assert len(proc.stdout.splitlines()) == entries  # both escape the newline in a name


@pytest.mark.parametrize("tar,options", [("tar", ["--warning=no-timestamp"]), ("bsdtar", [])])
def test_tar_extracts_a_tree_identical_to_the_source(tar, options, hard_tree, archive_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run(tar, "-xpf", archive_file, "-C", out, *options)
    assert proc.returncode == 0, proc.stderr
    assert unexpected_stderr(proc) == []
    assert tree_differences(hard_tree.root, out / hard_tree.root.name) == []


def test_gnu_tar_compare_finds_the_archive_identical_to_the_source(hard_tree, archive_file):
    """`tar --compare` checks contents, modes, link targets and mtimes; for members with a
    PAX header it compares mtimes to the nanosecond, so those must carry the exact time."""
    proc = run("tar", "--compare", "-f", archive_file, "-C", hard_tree.root.parent)
    assert unexpected_stderr(proc) == [] and proc.stdout == b"", proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_bsdtar_lists_the_exact_names(hard_tree, archive_file):
    proc = run("bsdtar", "-tf", archive_file)
    names = {unescape(ln) for ln in proc.stdout.splitlines()}
    assert names == expected_names(hard_tree.root)


# --- TapeReader ranges against the whole archive -----------------------------------------


@pytest.fixture(scope="module")
def reader(hard_tape):
    with TapeReader(hard_tape) as r:
        yield r


def test_ranges_at_every_member_boundary_match_the_whole_archive(hard_tape, hard_archive, reader):
    points = {0, hard_tape.total_size - 1024, hard_tape.total_size - 1}
    for m in hard_tape.members():
        for p in (m.offset, m.offset + 1, m.body_offset - 1, m.body_offset, m.body_offset + 1,
                  m.body_end - 1, m.body_end, m.end - 1):
            points.add(p)
    for o in sorted(points):
        for n in (1, 2, 511, 512, 513, 5000):
            assert reader.read(o, n) == hard_archive[o:o + n], (o, n)


def test_reads_at_or_past_the_end_are_empty_or_truncated(hard_tape, hard_archive, reader):
    total = hard_tape.total_size
    assert len(hard_archive) == total and total % 512 == 0
    assert hard_archive[-1024:] == bytes(1024)
    assert reader.read(total, 10) == b""
    assert reader.read(total + 4096, 10) == b""
    assert reader.read(total - 3, 10) == hard_archive[-3:]
    assert reader.read(5, 0) == b""


def test_seeded_random_ranges_match_the_whole_archive(hard_tape, hard_archive, reader):
    import random

    rng = random.Random(20240611)
    total = hard_tape.total_size
    for _ in range(2000):
        o = rng.randrange(0, total + 600)
        n = rng.choice([1, rng.randrange(1, 1024), rng.randrange(1, total + 1)])
        assert reader.read(o, n) == hard_archive[o:o + n], (o, n)


def test_a_reader_holds_no_source_file_open_between_reads(hard_tape, hard_archive):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()  # earlier tests' abandoned streams close their descriptors when collected
    with TapeReader(hard_tape) as reader:
        before = open_fds()
        for o in range(0, hard_tape.total_size, 700):
            assert reader.read(o, 1500) == hard_archive[o:o + 1500], o
            assert open_fds() <= before


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_range_matches_the_whole_archive(hard_tape, hard_archive, reader, data):
    o = data.draw(st.integers(0, hard_tape.total_size + 1000), label="offset")
    n = data.draw(st.integers(0, hard_tape.total_size + 1000), label="size")
    assert reader.read(o, n) == hard_archive[o:o + n]


# --- an 8 GiB + 1 byte sparse member, never materialized --------------------------------


class TapeFile(io.RawIOBase):
    """A seekable read-only file over TapeReader, so tarfile can skip bodies."""

    def __init__(self, reader: TapeReader, size: int) -> None:
        self.reader, self.size, self.pos = reader, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buf) -> int:
        data = self.reader.read(self.pos, len(buf))
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    with scratch_dir(tmp_path_factory, "sparse") as base:
        root, small = build_sparse_tree(base)
        tape = record(root)
        with TapeReader(tape) as reader:
            yield tape, reader, small


def test_tarfile_lists_the_8gib_member_and_reads_its_far_end(sparse):
    tape, reader, small = sparse
    with tarfile.open(fileobj=io.BufferedReader(TapeFile(reader, tape.total_size))) as tf:
        members = {m.name: m for m in tf.getmembers()}
        big = members["sparse/big"]
        assert big.size == SPARSE_SIZE
        body = tf.extractfile(big)
        assert body.read(4) == b"HEAD"
        body.seek(SPARSE_SIZE - 1)
        assert body.read(2) == b"\x01"
        assert tf.extractfile(members["sparse/zz_after"]).read() == small
    assert tape.locate("sparse/big").body_offset == big.offset_data


def test_sparse_member_ranges_come_from_the_source(sparse):
    tape, reader, _ = sparse
    big = tape.locate("sparse/big")
    assert big.size == SPARSE_SIZE and big.body_end - big.body_offset == SPARSE_SIZE
    assert b"size=8589934593\n" in reader.read(big.offset, big.header_size)
    assert reader.read(big.body_offset, 4) == b"HEAD"
    assert reader.read(big.body_offset + 8 * (1 << 30), 1) == b"\x01"
    assert reader.read(big.body_offset + 4 * (1 << 30), 4096) == bytes(4096)
    assert reader.read(big.body_end, big.end - big.body_end) == bytes(big.end - big.body_end)
    assert big.end - big.body_end == 511
    assert tape.total_size == tape.locate("sparse/zz_after").end + 1024


def holey_copy(tape, reader: TapeReader, path: Path) -> None:
    """The archive on disk with the big body's interior left as a hole (zeros, which
    is what TapeReader serves there: checked by the sampling test above)."""
    with open(path, "wb") as fh:
        fh.truncate(tape.total_size)
        for m in tape.members():
            regions = [(m.offset, m.body_offset), (m.body_end, m.end)]
            regions += [(m.body_offset, min(m.body_end, m.body_offset + 4096)),
                        (max(m.body_offset, m.body_end - 4096), m.body_end)]
            for start, end in regions:
                os.pwrite(fh.fileno(), reader.read(start, end - start), start)
        last = tape.total_size - 1024
        os.pwrite(fh.fileno(), reader.read(last, 1024), last)


@pytest.mark.parametrize("tar", ["tar", "bsdtar"])
def test_tar_lists_the_8gib_member_with_its_exact_size(tar, sparse, tmp_path):
    tape, reader, _ = sparse
    holey_copy(tape, reader, tmp_path / "sparse.tar")
    proc = run(tar, "-tvf", tmp_path / "sparse.tar")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["sparse/", "sparse/big", "sparse/zz_after"]
    assert str(SPARSE_SIZE) in lines[1].split()
