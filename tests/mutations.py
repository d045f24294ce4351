"""Every way a recorded source can change underneath a tape, as functions (and, last, a
change made certain to land while a file is being read).

Each takes the source root (a tree from ``trees.build_small_tree``, possibly with more
entries) and a folder outside it on the same file system, changes the source, and returns
the archive names of the members that may no longer be served. Shared by the library
tests (test_integrity.py) and the mount tests (test_mount_faults.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Files placed outside the tree are filled with this byte, so bytes from outside are
# recognisable if they were ever served.
OUTSIDE_BYTE = b"\xee"

FILE = "data/a.txt"
SWAPPED = ("data/sub/", "data/sub/c.txt", "data/sub/d.txt")


def grow(root: Path, outside: Path) -> tuple[str, ...]:
    with open(root / "a.txt", "ab") as fh:
        fh.write(b"more")
    return (FILE,)


def shrink(root: Path, outside: Path) -> tuple[str, ...]:
    os.truncate(root / "a.txt", 999)
    return (FILE,)


def truncate_to_zero(root: Path, outside: Path) -> tuple[str, ...]:
    os.truncate(root / "a.txt", 0)
    return (FILE,)


def replace_same_size_and_mtime(root: Path, outside: Path) -> tuple[str, ...]:
    """Only the inode tells: a new file renamed over the old, same size, mode and mtime."""
    old = os.stat(root / "a.txt")
    new = root / "a.txt.new"
    new.write_bytes(b"X" * old.st_size)
    os.chmod(new, old.st_mode)
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.rename(new, root / "a.txt")
    return (FILE,)


def delete(root: Path, outside: Path) -> tuple[str, ...]:
    os.unlink(root / "a.txt")
    return (FILE,)


def touch(root: Path, outside: Path) -> tuple[str, ...]:
    st = os.stat(root / "a.txt")
    os.utime(root / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    return (FILE,)


def chmod(root: Path, outside: Path) -> tuple[str, ...]:
    os.chmod(root / "a.txt", 0o600)
    return (FILE,)


def dir_swapped_for_symlink_to_a_copy(root: Path, outside: Path) -> tuple[str, ...]:
    subprocess.run(["cp", "-a", root / "sub", outside / "sub"], check=True)
    for copied in (outside / "sub").iterdir():  # recognisable if served; same size and mtime
        st = copied.stat()
        if copied.is_file() and st.st_size:
            copied.write_bytes(OUTSIDE_BYTE * st.st_size)
            os.utime(copied, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(root / "sub")
    os.symlink(outside / "sub", root / "sub")
    return SWAPPED


def dir_moved_out_and_symlinked(root: Path, outside: Path) -> tuple[str, ...]:
    """Same inodes, sizes and mtimes: only the path walk shows the bytes are outside."""
    os.rename(root / "sub", outside / "sub")
    os.symlink(outside / "sub", root / "sub")
    return SWAPPED


def file_moved_out_and_symlinked(root: Path, outside: Path) -> tuple[str, ...]:
    """The same inode, reached through a symlink: following it would serve outside bytes."""
    os.rename(root / "a.txt", outside / "a.txt")
    os.symlink(outside / "a.txt", root / "a.txt")
    return (FILE,)


def file_replaced_by_hard_link_to_outside(root: Path, outside: Path) -> tuple[str, ...]:
    """A hard link to a file outside the tree put in its place, same size, mode and mtime:
    no path component is a symlink, only the inode tells (same file system)."""
    old = os.stat(root / "a.txt")
    target = outside / "elsewhere.txt"
    target.write_bytes(OUTSIDE_BYTE * old.st_size)
    os.chmod(target, old.st_mode)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.unlink(root / "a.txt")
    os.link(target, root / "a.txt")
    return (FILE,)


MUTATIONS = [grow, shrink, truncate_to_zero, replace_same_size_and_mtime, delete, touch, chmod,
             file_moved_out_and_symlinked, dir_swapped_for_symlink_to_a_copy, dir_moved_out_and_symlinked,
             file_replaced_by_hard_link_to_outside]


def arm_race(compiled: bool, action, monkeypatch) -> None:
    """Make ``action()`` run while a reader reads a file's bytes: after the file's first check,
    before the check after its read. Pure path: os.pread wrapped (monkeypatch undoes it);
    compiled path: the extension's read hook (disarm_race removes it)."""
    from tartapefs import native

    if compiled:
        native.module.set_read_hook(action)
        return
    real_pread = os.pread

    def racing_pread(fd: int, size: int, offset: int) -> bytes:
        action()
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", racing_pread)


def disarm_race() -> None:
    from tartapefs import _native

    _native.set_read_hook(None)
