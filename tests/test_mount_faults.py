"""Real mounts whose source changes underneath: every kind of change fails that member
with EIO and nothing else, and a re-record while mounted never changes what the mount serves.

Buffered reads fail page by page (the kernel reads ahead and retries single pages), so in
the default mode only members far from a changed one are checked for exact bytes; with
``--direct-io`` each pread is one request and every other member is checked.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, TARTAPE, pread_errno, stream_bytes
from mutations import MUTATIONS, OUTSIDE_BYTE
from trees import archive_of, build_small_tree, content, record

pytestmark = NEEDS_MOUNT

FAR = "data/zz_far.bin"
FAR_SIZE = 4 << 20  # its tail lies MiBs past every member a mutation touches


def build_mutation_tree(parent: Path) -> Path:
    """The small tree (what the mutations expect) plus one big member at the end."""
    root = build_small_tree(parent)
    (root / "zz_far.bin").write_bytes(content(b"zz_far.bin", FAR_SIZE))
    return root


def read_until_error(fd: int, size: int, chunk: int = 1 << 20) -> tuple[bytes, int | None]:
    """Read ``fd`` from 0 like a streaming client; the bytes got and the errno that stopped it."""
    got = bytearray()
    while len(got) < size:
        try:
            data = os.pread(fd, chunk, len(got))
        except OSError as err:
            return bytes(got), err.errno
        if not data:
            break
        got += data
    return bytes(got), None


def pread_or_errno(fd: int, size: int, offset: int) -> bytes | int:
    try:
        return os.pread(fd, size, offset)
    except OSError as err:
        return err.errno


@pytest.mark.parametrize("direct_io", [False, True], ids=["buffered", "direct_io"])
@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
def test_every_source_change_is_eio_for_that_member_only(mounts, tmp_path, mutate, direct_io):
    src = build_mutation_tree(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    tape = record(src)
    reference = archive_of(tape)
    mount = mounts.foreground(src, None, *(["--direct-io"] if direct_io else []))
    # A client streaming the archive: its handle was opened before the change and, where
    # the page cache cannot answer for it, it has already read everything once.
    streaming = os.open(mount.file, os.O_RDONLY)
    try:
        if direct_io:
            assert read_until_error(streaming, len(reference)) == (reference, None)
        changed = mutate(src, outside)
        members = {m.arc_path: m for m in tape.members()}
        files = [members[name] for name in changed if members[name].kind == "file"]
        first = min(m.offset for m in files)
        for fd in (streaming, None):
            for m in files:
                body = ((m.body_offset, m.size), (m.body_end - 1, 1)) if m.size else ()
                for offset, size in ((m.offset, 512), (m.offset, m.end - m.offset), *body):
                    if fd is None:
                        got = pread_errno(mount.file, offset, size)
                    else:
                        got = pread_or_errno(fd, size, offset)
                    assert got == errno.EIO, f"{m.arc_path}: read {offset}+{size} gave {got!r}"
            # Read from the start, the archive stops with EIO before the first changed member.
            whole = os.open(mount.file, os.O_RDONLY) if fd is None else fd
            try:
                got, err = read_until_error(whole, len(reference))
            finally:
                if fd is None:
                    os.close(whole)
            assert err == errno.EIO and len(got) <= first and got == reference[: len(got)]
            assert OUTSIDE_BYTE * 16 not in got
        # Every other member is still served, exactly (buffered: the far one's tail).
        ranges = [(m.offset, m.end) for m in members.values() if m.arc_path not in changed]
        if not direct_io:
            far = members[FAR]
            ranges = [(far.body_end - (1 << 20), far.end)]
            assert ranges[0][0] - max(m.end for m in files) > (2 << 20)
        for start, end in ranges:
            assert pread_or_errno(streaming, end - start, start) == reference[start:end], (start, end)
    finally:
        os.close(streaming)
    assert mount.proc.poll() is None, "the daemon must keep serving"
    # The log names the mount and a changed member, once per reason.
    logged = [line for line in mount.log_text().splitlines() if "source changed since recording" in line]
    assert logged and str(mount.mnt) in logged[0]
    assert any(files[0].arc_path in line for line in logged), logged


def test_record_while_mounted_keeps_serving_the_mounted_tape(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    old_tape = record(src)
    old = archive_of(old_tape)
    mount = mounts.foreground(src, None, "--direct-io")  # exact member granularity
    changed = old_tape.locate("data/b.txt")
    with open(src / "b.txt", "ab") as f:
        f.write(b"grown after the mount, by more than a block" * 20)
    done = subprocess.run([*TARTAPE, "record", str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    new = stream_bytes(src)
    assert len(new) != len(old)
    # The mount still serves the tape it mounted: its size, its bytes, EIO for the changed file.
    assert os.stat(mount.file).st_size == len(old)
    fd = os.open(mount.file, os.O_RDONLY)
    try:
        for m in old_tape.members():
            got = pread_or_errno(fd, m.end - m.offset, m.offset)
            if m.arc_path == changed.arc_path:
                assert got == errno.EIO
            else:
                assert got == old[m.offset:m.end], m.arc_path
        footer = len(old) - 1024
        assert os.pread(fd, 2048, footer) == bytes(1024)
    finally:
        os.close(fd)
    # A new mount sees the new tape.
    fresh = mounts.background(src)
    assert os.stat(fresh.file).st_size == len(new)
    with open(fresh.file, "rb") as f:
        assert f.read() == new


@pytest.mark.parametrize("direct_io", [False, True], ids=["buffered", "direct_io"])
def test_cached_pages_keep_the_recorded_bytes_and_a_shared_page_fails_only_when_buffered(mounts, tmp_path,
                                                                                      direct_io):
    """What the README says of a change seen through the mount: pages the kernel already holds
    keep serving the recorded bytes; once dropped, a buffered read of an unchanged member's last
    page fails too when that page holds the changed member's header (the kernel asks for whole
    pages); --direct-io asks for exactly the bytes read, so the neighbour stays readable."""
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.bin").write_bytes(content(b"a", 1000))  # its body and b.bin's header share page 0
    (src / "b.bin").write_bytes(content(b"b", 1000))
    tape = record(src)
    reference = archive_of(tape)
    a, b = tape.locate("data/a.bin"), tape.locate("data/b.bin")
    assert a.body_end // 4096 == b.offset // 4096
    mount = mounts.foreground(src, None, *(["--direct-io"] if direct_io else []))
    fd = os.open(mount.file, os.O_RDONLY)
    try:
        assert os.pread(fd, len(reference), 0) == reference  # now in the page cache (buffered)
        with open(src / "b.bin", "ab") as f:
            f.write(b"more")
        if not direct_io:
            assert pread_or_errno(fd, 1000, b.body_offset) == reference[b.body_offset:b.body_offset + 1000]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert pread_or_errno(fd, 1000, b.body_offset) == errno.EIO
        neighbour = pread_or_errno(fd, a.size, a.body_offset)
        assert neighbour == (reference[a.body_offset:a.body_end] if direct_io else errno.EIO)
    finally:
        os.close(fd)
