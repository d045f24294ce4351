"""mtimes on both sides of every boundary the format, SQLite and the filesystem draw.

Every mtime the filesystem can hold must record, stream, mount, pass the integrity check and
come back from GNU tar and bsdtar as the archive carries it (whole seconds in ustar, to the
nanosecond in a PAX header), so that ``tar --compare`` finds the archive identical. The boundaries: ext4's
first second (1901), just before the epoch with a fraction, the epoch, the last second ustar's
11 octal digits hold (2242) and the first they do not, 2^63 ns (2262-04-11: past it a
nanosecond count no longer fits a signed 64-bit integer) one second either side, and a
second before ext4's last (2446). On tmpfs (as root) also past 2^63 ns the other way (1677)
and far past 2446.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, Mounts, tmpfs

TARTAPE = Path(sys.executable).parent / "tartape"
NS = 1_000_000_000
EXT4_LAST = 15032385535  # 2446-05-10 22:38:55; the kernel drops the fraction at the limits
MTIMES = {
    "1901-ext4-first": -(2**31) * NS,
    "1901-second-later-and-a-half": (-(2**31) + 1) * NS + NS // 2,
    "1969-12-31T23:59:59.5": -NS // 2,
    "1970": 0,
    "1970-and-1ns": 1,
    "2242-last-ustar-second": (8**11 - 1) * NS,
    "2242-last-ustar-second-and-a-quarter": (8**11 - 1) * NS + NS // 4,
    "2242-first-pax-second": 8**11 * NS,
    "2262-04-11-minus-1s": 2**63 - NS,
    "2262-04-11-last-int64-ns": 2**63 - 1,
    "2262-04-11-first-past-int64": 2**63,
    "2262-04-11-plus-1s": 2**63 + NS,
    "2300-whole-second": 10413792000 * NS,
    "2446-second-before-ext4-last": (EXT4_LAST - 1) * NS + 123_456_789,
}
TMPFS_ONLY = {
    "1677-before-int64-ns": -(2**63) - NS - 5,
    "2446-past-ext4": (EXT4_LAST + 1) * NS + 5,
    "3000": 32503680000 * NS + 999_999_999,
}


def build(parent: Path, mtimes: dict[str, int]) -> tuple[Path, dict[str, int]]:
    """A folder of one file per mtime; returns it and the mtimes the filesystem really kept."""
    src = parent / "times"
    src.mkdir()
    (src / ".tartape").mkdir(mode=0o700)  # first: it changes the folder's own mtime
    kept = {}
    for name, ns in mtimes.items():
        path = src / name
        path.write_bytes(name.encode())
        os.utime(path, ns=(ns, ns))
        kept[name] = os.lstat(path).st_mtime_ns
    os.utime(src, ns=(0, 0))
    return src, kept


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(os.fsencode, args)), capture_output=True, env={**os.environ, "LC_ALL": "C"})


def carried(ns: int) -> int:
    """The mtime an archive member carries: whole seconds in ustar, exact in a PAX header
    (which these members get only for seconds outside ustar's 0 .. 8**11 - 1)."""
    return ns if not 0 <= ns // NS <= 8**11 - 1 else ns // NS * NS


def check_archive(src: Path, archive: Path, kept: dict[str, int], out: Path) -> None:
    compare = run("tar", "--compare", "-f", archive, "-C", src.parent)
    assert compare.returncode == 0 and compare.stdout == b"", compare.stdout + compare.stderr
    for tar in ("tar", "bsdtar"):
        dest = out / tar
        dest.mkdir()
        done = run(tar, "-xf", archive, "-C", dest, *(["--warning=no-timestamp"] if tar == "tar" else []))
        assert done.returncode == 0, done.stderr
        want = {name: carried(ns) for name, ns in kept.items()}
        if tar == "bsdtar":
            # libarchive 3.6 adds a negative PAX mtime's fraction instead of subtracting it
            # (-0.5 reads as +0.5): the README says so; GNU tar and Python read it exactly.
            want = {name: ns for name, ns in want.items() if ns >= 0 or ns % NS == 0}
        got = {name: os.lstat(dest / src.name / name).st_mtime_ns for name in want}
        assert got == want, tar
    with tarfile.open(archive) as tf:  # a float of seconds: exact to well under a millisecond
        for member in tf.getmembers()[1:]:
            assert abs(member.mtime * NS - carried(kept[member.name.rsplit("/", 1)[1]])) < NS // 1000


@pytest.fixture(params=["tmp folder", "tmpfs"])
def times(request, tmp_path):
    """The boundary tree in pytest's folder, and on a tmpfs, which holds any 64-bit second."""
    if request.param == "tmp folder":
        yield build(tmp_path, MTIMES)
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "tmpfs"
    disk.mkdir()
    with tmpfs(disk, "16m"):
        src, kept = build(disk, {**MTIMES, **TMPFS_ONLY})
        assert kept == {**MTIMES, **TMPFS_ONLY}, "tmpfs keeps every nanosecond"
        yield src, kept


@pytest.mark.index
def test_every_mtime_the_filesystem_holds_records_verifies_and_extracts_exactly(times, tmp_path):
    src, kept = times
    assert any(ns >= 2**63 for ns in kept.values()), "the filesystem holds no mtime past 2^63 ns"
    for command in (["record"], ["verify"], ["stream", "-o", tmp_path / "a.tar"]):
        done = run(TARTAPE, *command[:1], src, *command[1:])
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    check_archive(src, tmp_path / "a.tar", kept, src.parent)  # extracted where the source lies


@pytest.mark.mount
def test_every_mtime_the_filesystem_holds_mounts_and_extracts_exactly(times, tmp_path):
    src, kept = times
    mounts = Mounts(tmp_path)
    try:
        mount = mounts.background(src)
        # The archive's own mtime is its newest member's second, past 2262 too.
        assert os.stat(mount.file).st_mtime_ns == max(kept.values()) // NS * NS
        check_archive(src, mount.file, kept, src.parent)
    finally:
        mounts.stop_all()
