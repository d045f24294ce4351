"""TapeFS called in-process, without mounting: the errno rules and the
never-a-short-read rule, against fake tapes and readers."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat

import pytest

pyfuse3 = pytest.importorskip("pyfuse3")
trio = pytest.importorskip("trio")

from tartapefs.errors import SourceChangedError  # noqa: E402
from tartapefs.fusefs import ROOT_INODE, TapeFS, stable_inode  # noqa: E402

pytestmark = pytest.mark.pure


class FakeTape:
    """The attributes TapeFS uses, and the bytes as its own reader."""

    def __init__(self, data: bytes, mtime: int = 1_600_000_000) -> None:
        self.data = data
        self.total_size = len(data)
        self.mtime = mtime
        self.fingerprint = hashlib.sha256(data).hexdigest()
        self.closed = False

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def close(self) -> None:
        self.closed = True


class ShortReader(FakeTape):
    def read(self, offset: int, size: int) -> bytes:
        return super().read(offset, size)[:-1]


class ChangedReader(FakeTape):
    def read(self, offset: int, size: int) -> bytes:
        raise SourceChangedError("data/b.txt", "size 3 -> 4 bytes")


class BuggyReader(FakeTape):
    def read(self, offset: int, size: int) -> bytes:
        raise ZeroDivisionError("a bug")


def make_fs(tape: FakeTape, **kw) -> TapeFS:
    fs = TapeFS({"dataset.tar": tape}, reader_factory=lambda t: t, **kw)
    fs.tape = tape
    return fs


def inode(fs: TapeFS, name: bytes = b"dataset.tar") -> int:
    return call(fs, "lookup", ROOT_INODE, name, None).st_ino


def call(fs: TapeFS, method: str, *args):
    return trio.run(getattr(fs, method), *args)


def fuse_errno(fs: TapeFS, method: str, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as err:
        call(fs, method, *args)
    return err.value.errno


def opened(fs: TapeFS, name: bytes = b"dataset.tar") -> int:
    return call(fs, "open", inode(fs, name), os.O_RDONLY, None).fh


def test_attributes_are_exact_and_from_the_tape():
    fs = make_fs(FakeTape(b"x" * 1025, mtime=1234))
    attr = call(fs, "lookup", ROOT_INODE, b"dataset.tar", None)
    assert attr.st_ino == stable_inode("dataset.tar", fs.tape) != ROOT_INODE
    assert attr.st_size == 1025 and attr.st_blocks == 3 and attr.st_blksize == 1 << 20
    assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o444
    assert attr.st_mtime_ns == attr.st_ctime_ns == attr.st_atime_ns == 1234 * 10**9
    root = call(fs, "getattr", ROOT_INODE, None)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o555


def test_the_inode_stands_for_a_name_with_its_bytes_size_and_mtime():
    tape = FakeTape(b"abc", mtime=5)
    same = stable_inode("dataset.tar", tape)
    assert stable_inode("dataset.tar", FakeTape(b"abc", mtime=5)) == same  # every mount alike
    assert stable_inode("other.tar", tape) != same
    assert stable_inode("dataset.tar", FakeTape(b"abd", mtime=5)) != same
    assert stable_inode("dataset.tar", FakeTape(b"abc", mtime=6)) != same


def test_unknown_names_and_inodes():
    fs = make_fs(FakeTape(b"abc"))
    assert fuse_errno(fs, "lookup", ROOT_INODE, b"nope", None) == errno.ENOENT
    assert fuse_errno(fs, "getattr", 999, None) == errno.ENOENT
    assert fuse_errno(fs, "opendir", inode(fs), None) == errno.ENOTDIR


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_APPEND])
def test_write_opens_are_refused(flags):
    fs = make_fs(FakeTape(b"abc"))
    assert fuse_errno(fs, "open", inode(fs), flags, None) == errno.EROFS


def test_open_keeps_the_cache_and_direct_io_only_on_request():
    fs = make_fs(FakeTape(b"abc"))
    info = call(fs, "open", inode(fs), os.O_RDONLY, None)
    assert info.keep_cache and not info.direct_io
    fs = make_fs(FakeTape(b"abc"), direct_io=True)
    info = call(fs, "open", inode(fs), os.O_RDONLY, None)
    assert info.direct_io


def test_read_returns_exact_bytes_and_nothing_past_the_end():
    fs = make_fs(FakeTape(bytes(range(256)) * 4))
    fh = opened(fs)
    assert call(fs, "read", fh, 10, 20) == (bytes(range(256)) * 4)[10:30]
    assert call(fs, "read", fh, 1000, 100) == (bytes(range(256)) * 4)[1000:]
    assert call(fs, "read", fh, 1024, 100) == b""
    assert call(fs, "read", fh, 5000, 100) == b""


def test_a_short_read_becomes_eio_never_a_short_answer():
    fs = make_fs(ShortReader(b"abcdef"))
    assert fuse_errno(fs, "read", opened(fs), 0, 4) == errno.EIO


def test_changed_source_is_eio_and_logged_once(caplog):
    fs = make_fs(ChangedReader(b"abcdef"))
    fh = opened(fs)
    with caplog.at_level(logging.DEBUG, logger="tartapefs.fusefs"):
        for _ in range(3):
            assert fuse_errno(fs, "read", fh, 0, 4) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "data/b.txt" in errors[0].getMessage() and "size 3 -> 4 bytes" in errors[0].getMessage()


def test_unexpected_errors_become_eio_and_keep_the_loop_alive(caplog):
    fs = make_fs(BuggyReader(b"abcdef"))
    with caplog.at_level(logging.ERROR, logger="tartapefs.fusefs"):
        assert fuse_errno(fs, "read", opened(fs), 0, 4) == errno.EIO
    assert "unexpected error in read" in caplog.text


def test_released_handles_are_forgotten():
    fs = make_fs(FakeTape(b"abc"))
    fh = opened(fs)
    call(fs, "release", fh)
    assert fuse_errno(fs, "read", fh, 0, 1) == errno.EBADF


def test_a_reader_is_made_at_the_first_open_and_closed_at_the_last_release():
    made = []

    def factory(tape):
        made.append(FakeTape(tape.data))
        return made[-1]

    fs = TapeFS({"dataset.tar": FakeTape(b"abc")}, reader_factory=factory)
    assert made == []  # nothing is opened for an entry nobody reads
    first, second = opened(fs), opened(fs)
    assert len(made) == 1  # the handles of one entry share it
    call(fs, "release", first)
    assert not made[0].closed
    call(fs, "release", second)
    assert made[0].closed
    third = opened(fs)
    assert len(made) == 2 and call(fs, "read", third, 0, 3) == b"abc"
    fs.close()
    assert made[1].closed


def test_a_replaced_entry_leaves_open_handles_reading_their_own():
    fs = make_fs(FakeTape(b"old bytes"))
    fh = opened(fs)
    old = inode(fs)
    fs.put("dataset.tar", FakeTape(b"new bytes!", mtime=5))
    assert call(fs, "read", fh, 0, 100) == b"old bytes"
    assert call(fs, "read", opened(fs), 0, 100) == b"new bytes!"
    assert inode(fs) != old and call(fs, "getattr", inode(fs), None).st_size == 10
    assert call(fs, "getattr", old, None).st_size == 9  # the kernel may still ask about it


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 256])
def test_bad_tape_names_are_refused(name):
    with pytest.raises(ValueError):
        make_fs_named(name)


def make_fs_named(name: str) -> TapeFS:
    return TapeFS({name: FakeTape(b"abc")}, reader_factory=lambda t: t)


def test_statfs_counts_the_tapes():
    fs = TapeFS({"a.tar": FakeTape(b"x" * 1000), "b.tar": FakeTape(b"y" * 24)}, reader_factory=lambda t: t)
    st = call(fs, "statfs", None)
    assert st.f_blocks * st.f_frsize >= 1024 and st.f_files == 3 and st.f_bavail == 0
