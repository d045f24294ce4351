"""A hostile source (docs/SECURITY.md): whoever may write in SRC tries to hang the reader,
stall it, or get bytes served that were never recorded. Every attack ends in an error for
that member only, within a deadline: a hang is a failure detected by a timeout here, never
a hung suite.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, NOBODY, TARTAPE, bounded, one_line
from trees import archive_of, build_small_tree, record


# Reads one member through the library in a child process, so that a hang can be cut short.
READ_MEMBER = """
import sys
import tarfile
from tartapefs import Tape, TapeReader, TartapeError
tape = Tape.open(sys.argv[1])
m = tape.locate(sys.argv[2])
with TapeReader(tape) as reader:
    try:
        data = reader.read(m.offset, m.end - m.offset)
    except TartapeError as err:
        print(type(err).__name__, err)
    else:
        print("served", len(data))
"""


def read_member(tape, name: str) -> str:
    """``served N`` or ``ErrorClass message`` for a library read of member ``name``."""
    done = bounded([sys.executable, "-c", READ_MEMBER, tape.index_path, name])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout.strip()


def release_fifo(path: Path) -> None:
    """Open the FIFO for writing without blocking: whoever waits to read it (a reader of the
    unfixed code) is let go, so no process outlives the test."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # ENXIO: nobody was waiting


def pread_through(mount, offset: int, size: int) -> list[str]:
    """pread through a mount in a child process: ``bytes N`` or ``errno N``."""
    code = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "try:\n    print('bytes', len(os.pread(fd, int(sys.argv[3]), int(sys.argv[2]))))\n"
            "except OSError as err:\n    print('errno', err.errno)\n")
    return bounded([sys.executable, "-c", code, mount.file, offset, size], on_hang=mount.proc.kill).stdout.split()


# --- finding 4: a FIFO in place of a source file ----------------------------------------------


@pytest.fixture
def fifo_swapped(tmp_path):
    """The small tree recorded, then data/a.txt replaced by a FIFO that nobody writes."""
    src = build_small_tree(tmp_path)
    tape = record(src)
    os.unlink(src / "a.txt")
    os.mkfifo(src / "a.txt")
    yield src, tape
    release_fifo(src / "a.txt")


@pytest.mark.index
@pytest.mark.usefixtures("hot_path")  # the reading child inherits the path
def test_a_fifo_in_place_of_a_source_file_fails_that_member_and_never_hangs(fifo_swapped):
    src, tape = fifo_swapped
    got = read_member(tape, "data/a.txt")
    assert got.startswith("SourceChangedError") and "data/a.txt" in got, got
    assert read_member(tape, "data/b.txt") == f"served {tape.locate('data/b.txt').end - tape.locate('data/b.txt').offset}"
    streamed = bounded([*TARTAPE, "stream", src, "-o", src.parent / "out.tar"])
    assert "data/a.txt" in one_line(streamed) and not (src.parent / "out.tar").exists()
    verified = bounded([*TARTAPE, "verify", src])
    assert verified.returncode == 1 and "data/a.txt" in verified.stdout, verified


@NEEDS_MOUNT
@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path
def test_mount_a_fifo_in_place_of_a_source_file_is_eio_and_the_daemon_keeps_answering(fifo_swapped, mounts):
    src, tape = fifo_swapped
    mount = mounts.foreground(src, None, "--direct-io")
    try:
        a, b = tape.locate("data/a.txt"), tape.locate("data/b.txt")
        assert pread_through(mount, a.offset, a.end - a.offset) == ["errno", str(errno.EIO)]
        assert pread_through(mount, b.offset, b.end - b.offset) == ["bytes", str(b.end - b.offset)]
        statfs = bounded([sys.executable, "-c", "import os, sys; os.statvfs(sys.argv[1])", mount.mnt],
                         on_hang=mount.proc.kill)
        assert statfs.returncode == 0, statfs.stderr
    finally:
        release_fifo(src / "a.txt")


# --- finding 5: a write lease on a source file ---------------------------------------------------

HOLD_LEASE = f"""
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # told to give the lease up, it never does
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def leased(world_dir):
    """The small tree (its a.txt owned by nobody) recorded by root, then nobody takes a
    write lease on a.txt and ignores the kernel's request to give it up."""
    src = build_small_tree(world_dir)
    os.chown(src / "a.txt", NOBODY, NOBODY)
    tape = record(src)
    reference = archive_of(tape)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(src / "a.txt")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield src, tape, reference
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.index
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.usefixtures("hot_path")  # the reading child inherits the path
def test_a_write_lease_on_a_source_file_fails_that_member_at_once(leased):
    src, tape, _ = leased
    got = read_member(tape, "data/a.txt")
    assert got.startswith("SourceBusyError") and "data/a.txt" in got and "lease" in got, got
    b = tape.locate("data/b.txt")
    assert read_member(tape, "data/b.txt") == f"served {b.end - b.offset}"


@NEEDS_MOUNT
@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path
def test_mount_a_write_lease_on_a_source_file_is_eio_for_that_member_only_and_logged(leased, mounts):
    src, tape, reference = leased
    mount = mounts.foreground(src, None, "--direct-io")
    a, b = tape.locate("data/a.txt"), tape.locate("data/b.txt")
    assert pread_through(mount, a.offset, a.end - a.offset) == ["errno", str(errno.EIO)]
    with open(mount.file, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), b.end - b.offset, b.offset) == reference[b.offset:b.end]
    logged = [line for line in mount.log_text().splitlines() if "data/a.txt" in line]
    assert len(logged) == 1 and "lease" in logged[0], logged


# --- finding 6: what the check compares: ctime too --------------------------------------------


def rewrite_in_place_and_restore_mtime(path: Path) -> None:
    """New bytes, same size, same inode, the old mtime put back: only ctime tells."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"N" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def recreate_with_the_same_inode(path: Path) -> None:
    """Deleted, then a new file with the same size, mode and mtime made until the file system
    hands out the freed inode number again (ext4 does at once)."""
    st = os.stat(path)
    os.unlink(path)
    spares = []
    try:
        for attempt in range(64):
            path.write_bytes(b"N" * st.st_size)
            if os.stat(path).st_ino == st.st_ino:
                break
            spares.append(path.with_name(f"spare{attempt}"))
            os.rename(path, spares[-1])  # keeps that inode number busy: the next try gets another
        else:
            pytest.skip("this file system never reused the inode number")
    finally:
        for spare in spares:
            os.unlink(spare)
    os.chmod(path, stat_mode(st))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def stat_mode(st: os.stat_result) -> int:
    return st.st_mode & 0o7777


@pytest.mark.parametrize("attack", [rewrite_in_place_and_restore_mtime, recreate_with_the_same_inode],
                         ids=lambda f: f.__name__)
@pytest.mark.index
@pytest.mark.usefixtures("hot_path")  # the reading child inherits the path
def test_a_file_changed_behind_the_same_inode_size_and_mtime_is_not_served(tmp_path, attack):
    src = build_small_tree(tmp_path)
    tape = record(src)
    before = os.stat(src / "a.txt")
    attack(src / "a.txt")
    after = os.stat(src / "a.txt")
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) == \
           (before.st_ino, before.st_size, before.st_mtime_ns, before.st_mode)
    got = read_member(tape, "data/a.txt")
    assert got.startswith("SourceChangedError") and "ctime" in got, got
    verified = bounded([*TARTAPE, "verify", src])
    assert verified.returncode == 1 and "data/a.txt" in verified.stdout, verified


# --- finding 7: a write while the file is being read ---------------------------------------------


@pytest.mark.index
@pytest.mark.parametrize("whole", [True, False], ids=["whole_member", "body_only"])
def test_a_write_landing_between_the_check_and_the_read_is_not_served(tmp_path, during_read, whole):
    """The race made certain, on both paths of the read loop: the file is written (and its
    mtime put back) after its first check passed and before the check after its read.
    Those bytes must not be served."""
    from tartapefs import TapeReader
    from tartapefs.errors import SourceChangedError

    src = build_small_tree(tmp_path)
    tape = record(src)
    m = tape.locate("data/a.txt")
    written = []

    def write_once() -> None:
        if not written:
            rewrite_in_place_and_restore_mtime(src / "a.txt")
            written.append(True)

    during_read(write_once)
    offset, size = (m.offset, m.end - m.offset) if whole else (m.body_offset, m.size)
    with TapeReader(tape) as reader:
        try:
            got = reader.read(offset, size)
        except SourceChangedError as err:
            assert err.member == "data/a.txt" and "while" in err.reason, err
        else:
            pytest.fail(f"served {got[:8]!r}... written after the check")
    assert written


# --- finding 11: a tree deeper than the open-file limit ------------------------------------------

DEPTH = 300
FD_LIMIT = 256  # GNU tar records a tree DEPTH folders deep with no more descriptors than this


def limited(argv: list) -> list:
    """``argv`` run with at most FD_LIMIT open descriptors, as ``ulimit -n`` sets it."""
    return ["sh", "-c", f'ulimit -n {FD_LIMIT} && exec "$@"', "limited", *map(str, argv)]


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [info.name.rstrip("/") for info in tar]


@pytest.mark.index
@pytest.mark.usefixtures("hot_path")  # the streaming child inherits the path
def test_a_tree_deeper_than_the_open_file_limit_is_recorded_and_streamed_as_gnu_tar_does(tmp_path):
    chain = Path("chain", *["d"] * DEPTH)
    (tmp_path / chain).mkdir(parents=True)
    (tmp_path / chain / "leaf").write_bytes(b"deep\n")
    src, index, ours, gnu = tmp_path / "chain", tmp_path / "index.db", tmp_path / "ours.tar", tmp_path / "gnu.tar"
    assert bounded(limited(["tar", "-cf", gnu, "-C", tmp_path, "chain"])).returncode == 0  # the bar
    for command in (["record", src, "--index", index], ["stream", src, "--index", index, "-o", ours]):
        done = bounded(limited([*TARTAPE, *command]))
        assert done.returncode == 0, done.stderr[-400:]
    assert tar_names(ours) == tar_names(gnu) and len(tar_names(ours)) == DEPTH + 2
    with tarfile.open(ours) as tar:
        assert tar.extractfile(str(chain / "leaf")).read() == b"deep\n"


@pytest.mark.index
@pytest.mark.usefixtures("hot_path")
def test_a_folder_moved_while_a_deep_walk_has_let_its_parent_go_is_refused(tmp_path, monkeypatch):
    """With two folders open at most, the walk climbs back through each folder's '..': a
    folder moved meanwhile leads elsewhere, and is refused rather than walked on from there."""
    from tartapefs import UsageError, scan

    monkeypatch.setattr(scan, "_folder_budget", lambda: 2)
    src = tmp_path / "src"
    (src / "a/b/c/d").mkdir(parents=True)
    (src / "a/b/c/d/f").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    seen = []
    with pytest.raises(UsageError, match="^a/b: moved while its folder was being recorded"):
        for entry in scan.walk(str(src)):
            seen.append(entry.source)
            if entry.source == b"a/b/c/d/f":
                os.rename(src / "a/b", tmp_path / "elsewhere/b")
    assert seen == [b"", b"a", b"a/b", b"a/b/c", b"a/b/c/d", b"a/b/c/d/f"]
