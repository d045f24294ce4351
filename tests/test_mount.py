"""Real mounts driven by real clients (root and /dev/fuse needed, as on CI).

The reference for every byte is ``tartape stream SRC``; copies and extracted
trees are compared with it and with the source folder. Timings are never
asserted: waits have deadlines only so a broken mount fails instead of hanging.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mountutil import (DEADLINE_S, NAME, NEEDS_MOUNT, NOBODY, TARTAPE, TARTAPE_MOUNT, Mounts, as_nobody, daemon_env,
                       daemon_pids, force_unmount, is_stale, mounted_fstype, pid_gone, pread_errno,
                       run_as_nobody, run_mount_cli, stream_bytes, wait_until)
from tartapefs import Tape
from trees import _Builder, build_small_tree, content, scratch_dir, tree_differences

pytestmark = NEEDS_MOUNT

C_LOCALE = {**os.environ, "LC_ALL": "C"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_transfer_tree(parent: Path) -> Path:
    """Small members plus a few MiB-sized ones: the archive spans many FUSE
    requests and is big enough for rclone's multi-thread copy (cutoff 1M)."""
    root = parent / "data"
    b = _Builder(root)
    b.dir(b"big")
    for rel, size in ((b"a.txt", 1000), (b"b.txt", 3), (b"big/one.bin", 3 * (1 << 20) + 7),
                      (b"big/two.bin", 2 * (1 << 20)), (b"big/empty", 0), (b"z.txt", 513)):
        b.file(rel, content(rel, size))
    b.symlink(b"link", b"a.txt")
    b.finish()
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One mount of the transfer tree shared by the read-only client tests,
    with the reference bytes from ``tartape stream``."""
    with scratch_dir(tmp_path_factory, "served") as base:
        src = build_transfer_tree(base)
        mounts = Mounts(base)
        try:
            mount = mounts.background(src)
            yield mount, stream_bytes(src)
        finally:
            mounts.stop_all()


@pytest.fixture(autouse=True, scope="module")
def nothing_left_mounted(tmp_path_factory: pytest.TempPathFactory):
    """Safety net: fail loudly (and clean up) if any tartapefs mount under
    this run's temporary folder survives its test."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    leftovers = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "fuse.tartapefs" and fields[4].startswith(base):
                leftovers.append(fields[4])
    for mnt in leftovers:
        force_unmount(Path(mnt))
    assert not leftovers, f"mounts left behind: {leftovers}"


# --- bytes --------------------------------------------------------------------------------


def test_mounted_bytes_equal_the_stream(served):
    mount, reference = served
    assert os.stat(mount.file).st_size == len(reference)
    assert file_sha256(mount.file) == sha256(reference)


def test_stat_is_exact_and_stable(served):
    mount, reference = served
    st = os.stat(mount.file)
    assert st.st_size == len(reference)
    assert st.st_blocks == -(-len(reference) // 512)
    assert st.st_blksize == 1 << 20
    assert st.st_mode & 0o7777 == 0o444 and st.st_nlink == 1
    assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
    # mtime from the tape, never the clock: atime, mtime and ctime all equal it.
    assert st.st_mtime_ns == st.st_atime_ns == st.st_ctime_ns
    assert st.st_mtime_ns % 10**9 == 0
    assert os.listdir(mount.mnt) == [NAME]
    assert os.stat(mount.mnt).st_mode & 0o7777 == 0o555


def test_random_ranges_from_four_threads(served):
    mount, reference = served
    rng = random.Random(1234)
    size = len(reference)
    ranges = [(rng.randrange(size + 10), rng.choice([1, 511, 512, 4096, 65536, 1 << 20, rng.randrange(1, 300_000)]))
              for _ in range(1200)]

    def read(chunk):
        fd = os.open(mount.file, os.O_RDONLY)
        try:
            return [os.pread(fd, n, off) == reference[off:off + n] for off, n in chunk]
        finally:
            os.close(fd)

    with ThreadPoolExecutor(4) as pool:
        results = [ok for part in pool.map(read, [ranges[i::4] for i in range(4)]) for ok in part]
    assert len(results) == 1200 and all(results)


def test_write_opens_are_refused(served):
    mount, _ = served
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(OSError) as err:
            os.close(os.open(mount.file, flags))
        assert err.value.errno in (errno.EROFS, errno.EACCES)


# --- real clients -------------------------------------------------------------------------


def test_cp_and_dd_copy_identical_bytes(served, tmp_path):
    mount, reference = served
    subprocess.run(["cp", str(mount.file), str(tmp_path / "cp.tar")], check=True)
    subprocess.run(["dd", f"if={mount.file}", f"of={tmp_path / 'dd.tar'}", "bs=1M", "status=none"], check=True)
    assert file_sha256(tmp_path / "cp.tar") == sha256(reference)
    assert file_sha256(tmp_path / "dd.tar") == sha256(reference)


def test_gnu_tar_lists_extracts_and_compares(served, tmp_path):
    mount, reference = served
    listing = subprocess.run(["tar", "-tvf", str(mount.file)], capture_output=True, check=True, env=C_LOCALE)
    names = {line.split(maxsplit=5)[5].split(b" -> ")[0] for line in listing.stdout.splitlines()}
    with tarfile.open(fileobj=io.BytesIO(reference)) as ref:
        assert names == {os.fsencode(m.name) + (b"/" if m.isdir() else b"") for m in ref.getmembers()}
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(mount.file), "-C", str(out)], check=True, env=C_LOCALE)
    assert tree_differences(mount.src, out / "data") == []
    # GNU tar's own comparison of archive and file system (contents, sizes, modes, mtimes).
    subprocess.run(["tar", "--compare", "-f", str(mount.file), "-C", str(mount.src.parent)],
                   check=True, env=C_LOCALE)


def test_bsdtar_extracts_the_source(served, tmp_path):
    mount, _ = served
    if not shutil.which("bsdtar"):
        pytest.skip("bsdtar is not installed (Debian package libarchive-tools)")
    subprocess.run(["bsdtar", "-xpf", str(mount.file), "-C", str(tmp_path)], check=True)
    assert tree_differences(mount.src, tmp_path / "data") == []


def test_python_tarfile_extracts_the_source(served, tmp_path):
    mount, _ = served
    with tarfile.open(mount.file) as tf:
        kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tf.extractall(tmp_path, **kwargs)
    # tarfile does not set a symlink's own mtime (it would follow the link).
    assert tree_differences(mount.src, tmp_path / "data", symlink_mtimes=False) == []


def test_rsync_copies_and_then_has_nothing_to_do(served, tmp_path):
    mount, reference = served
    subprocess.run(["rsync", "-t", str(mount.file), str(tmp_path) + "/"], check=True)
    assert file_sha256(tmp_path / NAME) == sha256(reference)
    # Same size and mtime on the next run (no clock in the stat): nothing to transfer.
    again = subprocess.run(["rsync", "-t", "--itemize-changes", str(mount.file), str(tmp_path) + "/"],
                           capture_output=True, text=True, check=True)
    assert again.stdout.strip() == ""


# --append-verify appends after the existing bytes, then checks the whole file; --partial with
# delta transfer (local copies default to --whole-file) uses the partial file as the basis.
@pytest.mark.parametrize("resume", [["--append-verify"], ["--partial", "--no-whole-file"]],
                         ids=["append-verify", "partial"])
def test_rsync_resumes_an_interrupted_copy(served, tmp_path, resume):
    mount, reference = served
    dst = tmp_path / NAME
    # The interruption: a copy that stopped at an arbitrary byte, as --partial keeps it.
    dst.write_bytes(reference[: len(reference) // 2 + 12345])
    subprocess.run(["rsync", *resume, str(mount.file), str(dst)], check=True)
    assert file_sha256(dst) == sha256(reference)


def test_rclone_multi_thread_copy(served, tmp_path):
    mount, reference = served
    if not shutil.which("rclone"):
        pytest.skip("rclone is not installed")
    done = subprocess.run(
        ["rclone", "copy", "--multi-thread-streams", "4", "--multi-thread-cutoff", "1M", "-vv",
         "--config", os.devnull, str(mount.file), str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert file_sha256(tmp_path / NAME) == sha256(reference)
    # rclone uses parallel ranged reads on local-to-local copies too; prove these
    # went through the concurrent path rather than one sequential stream.
    assert "multi-thread copy" in done.stderr, done.stderr[-2000:]


# --- lifecycle ----------------------------------------------------------------------------


def test_remount_gives_identical_size_mtime_inode_and_bytes(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    first = mounts.background(src)
    st1, sha1 = os.stat(first.file), file_sha256(first.file)
    first.stop()
    assert mounted_fstype(first.mnt) is None
    second = mounts.background(src, first.mnt)
    st2 = os.stat(second.file)
    assert (st2.st_size, st2.st_mtime_ns, st2.st_ino) == (st1.st_size, st1.st_mtime_ns, st1.st_ino)
    assert file_sha256(second.file) == sha1 == sha256(stream_bytes(src))


def _locate(src: Path, member: str):
    from tartapefs import Tape

    with Tape.discover(str(src)) as tape:
        return tape.locate(member)


@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path
def test_changed_source_gives_eio_for_that_member_only(mounts, tmp_path):
    src = build_transfer_tree(tmp_path)
    mount = mounts.foreground(src)
    one, two = _locate(src, "data/big/one.bin"), _locate(src, "data/big/two.bin")
    # Change two.bin after recording (same size, new content and mtime); nothing of it was read yet.
    with open(src / "big" / "two.bin", "r+b") as f:
        f.write(b"changed!")
    assert pread_errno(mount.file, two.body_offset + 100_000, 4096) == errno.EIO
    assert pread_errno(mount.file, two.offset, 512) == errno.EIO  # its header too
    # Everything else is still served, from pages that do not touch the changed member.
    reference_one = content(b"big/one.bin", one.size)
    fd = os.open(mount.file, os.O_RDONLY)
    try:
        assert os.pread(fd, one.size - 8192, one.body_offset) == reference_one[: one.size - 8192]
        a = _locate(src, "data/a.txt")
        assert os.pread(fd, a.size, a.body_offset) == content(b"a.txt", a.size)
    finally:
        os.close(fd)
    assert mount.proc.poll() is None, "the daemon must keep serving"
    # One log line names the mount, the member and the reason.
    lines = [line for line in mount.log_text().splitlines() if "big/two.bin" in line]
    assert lines and str(mount.mnt) in lines[0] and "EIO" in lines[0]


@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path
def test_many_small_files_read_through_the_mount_extract_with_gnu_tar_as_the_source(hot_path, mounts, tmp_path):
    """1 MiB requests of a few hundred members each: on the compiled path the daemon serves
    the later half of each request's members on a second thread of the extension (it has
    one, by its name, afterwards); GNU tar extracts what `dd bs=1M` read to the source tree."""
    src = tmp_path / "many"
    b = _Builder(src)
    for i in range(600):
        folder = f"d{i % 2}"
        if i < 2:
            b.dir(folder.encode())
        rel = f"{folder}/f{i:04d}".encode()
        b.file(rel, content(rel, 1024 + (i * 7919) % 7169))
    b.finish()
    mount = mounts.foreground(src)
    copy, out = tmp_path / "copy.tar", tmp_path / "out"
    subprocess.run(["dd", f"if={mount.file}", f"of={copy}", "bs=1M", "status=none"], check=True)
    out.mkdir()
    subprocess.run(["tar", "-xf", str(copy), "-C", str(out)], check=True)
    assert tree_differences(src, out / "many") == []
    threads = {Path(f"/proc/{mount.proc.pid}/task/{t}/comm").read_text().strip()
               for t in os.listdir(f"/proc/{mount.proc.pid}/task")}
    assert ("tartapefs-part" in threads) == (hot_path == "compiled"), threads


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="with syslog present the daemon logs there")
def test_a_background_daemon_without_syslog_logs_the_changed_member_to_its_state_folder(
        mounts, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    src = build_transfer_tree(tmp_path)
    mount = mounts.background(src, None, log_file=False)
    two = _locate(src, "data/big/two.bin")
    with open(src / "big" / "two.bin", "r+b") as f:
        f.write(b"changed!")
    assert pread_errno(mount.file, two.body_offset, 4096) == errno.EIO
    log = tmp_path / "state" / "tartapefs" / "log" / (str(mount.mnt).strip("/").replace("/", "_") + ".log")
    wait_until(lambda: log.exists() and "big/two.bin" in log.read_text(), f"the member named in {log}")


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} tartape-mount (/\S*): (INFO|ERROR) (.+)")
SERVING = re.compile(r"serving (/\S+): (\d+) bytes, (\d+) members, from (/\S+) \(index (/\S+)\)")
CHANGED = re.compile(r"(\S+): source changed since recording: (.+); answering EIO for its range")


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="with syslog present the daemon logs there")
def test_a_background_daemon_logs_when_it_serves_as_the_readme_shows_and_old_logs_go(mounts, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    logs = tmp_path / "state" / "tartapefs" / "log"
    logs.mkdir(parents=True)
    gone, recent = logs / "mnt_gone.log", logs / "mnt_other.log"
    for old in (gone, recent):
        old.write_text("an older daemon's line\n")
    month_ago = time.time() - 31 * 86400
    os.utime(gone, (month_ago, month_ago))
    src = build_transfer_tree(tmp_path)
    mount = mounts.background(src, None, log_file=False)
    log = logs / (str(mount.mnt).strip("/").replace("/", "_") + ".log")
    wait_until(lambda: log.exists() and " serving " in log.read_text(), f"the serving line in {log}")
    assert not gone.exists() and recent.exists()
    two = _locate(src, "data/big/two.bin")
    with open(src / "big" / "two.bin", "r+b") as f:
        f.write(b"changed!")
    assert pread_errno(mount.file, two.body_offset, 4096) == errno.EIO
    wait_until(lambda: " ERROR " in log.read_text(), f"the error line in {log}")
    real = [LOG_LINE.fullmatch(line) for line in log.read_text().splitlines()]
    assert all(real) and {m.group(1) for m in real} == {str(mount.mnt)}
    serving = [SERVING.fullmatch(m.group(3)) for m in real if m.group(3).startswith("serving ")]
    tape = Tape.discover(str(src))
    assert len(serving) == 1 and serving[0].groups() == (
        str(mount.file), str(tape.total_size), str(tape.member_count), str(src), tape.index_path)
    assert [CHANGED.fullmatch(m.group(3)).group(1) for m in real if m.group(2) == "ERROR"] == ["data/big/two.bin"]
    # The README shows lines of exactly these shapes.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    sample = [LOG_LINE.fullmatch(line) for line in readme.splitlines() if " tartape-mount /" in line]
    assert len(sample) == 2 and all(sample), sample
    assert SERVING.fullmatch(sample[0].group(3)) and CHANGED.fullmatch(sample[1].group(3))


def test_name_and_index_options(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    index = tmp_path / "elsewhere" / "my.db"
    index.parent.mkdir()
    mount = mounts.background(src, None, "--name", "photos.tar", "--index", str(index))
    assert os.listdir(mount.mnt) == ["photos.tar"]
    assert index.exists() and not (src / ".tartape").exists()
    reference = subprocess.run([*TARTAPE, "stream", str(src), "--index", str(index)],
                               capture_output=True, check=True).stdout
    assert file_sha256(mount.mnt / "photos.tar") == sha256(reference)


def test_sigterm_unmounts_and_exits_zero(mounts, tmp_path):
    mount = mounts.foreground(build_small_tree(tmp_path))
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(timeout=DEADLINE_S) == 0
    assert mounted_fstype(mount.mnt) is None


def test_background_start_is_ready_and_dash_u_stops_the_daemon(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    mount = mounts.background(src)
    # Readable the moment the command returned: no waiting.
    assert file_sha256(mount.file) == sha256(stream_bytes(src))
    assert len(mount.pids) == 1
    done = run_mount_cli("-u", mount.mnt)
    assert done.returncode == 0, done.stderr
    assert mounted_fstype(mount.mnt) is None
    wait_until(lambda: pid_gone(mount.pids[0]), "daemon exit after -u")


def test_after_kill_9_the_next_mount_works(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    dead = mounts.foreground(src)
    dead.proc.kill()
    dead.proc.wait()
    assert is_stale(dead.mnt)
    again = mounts.background(src, dead.mnt)
    assert file_sha256(again.file) == sha256(stream_bytes(src))


def test_a_tape_mounted_inside_its_source_is_left_out_of_a_new_recording(mounts, tmp_path):
    from tartapefs import Tape

    src = build_small_tree(tmp_path)
    (src / "mnt").mkdir()
    mount = mounts.background(src, src / "mnt")
    # Recorded again while mounted: the walk reaches the mount. Archived, its member would
    # make a daemon read its own archive.
    done = subprocess.run([*TARTAPE, "record", src, "--index", tmp_path / "again.db"],
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert "mnt: skipped, a tartapefs mount" in done.stderr
    with Tape.open(str(tmp_path / "again.db")) as tape:
        sources = [m.source for m in tape.members()]
    assert b"sub/c.txt" in sources and not any(s.startswith(b"mnt") for s in sources), sources
    # The mount itself recorded "mnt" as the empty folder it was, and serves on.
    assert tarfile.open(mount.file).getmember("data/mnt").isdir()


def test_a_stopped_daemon_is_reported_not_waited_for(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    frozen = mounts.foreground(src)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        # Probing the mount point used to wait forever for the frozen daemon.
        done = run_mount_cli(src, frozen.mnt)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert str(frozen.mnt) in lines[0] and "stopped or hung" in lines[0]
        assert f"fusermount3 -uz {frozen.mnt}" in lines[0]
        assert mounted_fstype(frozen.mnt) == "fuse.tartapefs"  # left for its owner to decide
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    # Continued, the daemon serves as before.
    assert file_sha256(frozen.file) == sha256(stream_bytes(src))


def test_systemd_notify_ready_then_stopping(mounts, tmp_path):
    src = build_small_tree(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"tartapefs-test-{os.getpid()}-{id(tmp_path)}"
    sock.bind("\0" + address)  # abstract namespace, as systemd's own socket
    sock.settimeout(DEADLINE_S)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([*TARTAPE_MOUNT, str(src), str(mnt), "-f"],
                            env={**daemon_env(), "NOTIFY_SOCKET": "@" + address},
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        assert (mnt / NAME).exists()  # READY=1 means usable
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        sock.close()
        force_unmount(mnt)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- user errors: one line, non-zero, no traceback ----------------------------------------


def _bad_case(tmp_path: Path, mounts: Mounts, case: str) -> tuple[list[Path], str]:
    src = build_small_tree(tmp_path)
    mnt = tmp_path / "mnt"
    if case == "missing source":
        return [tmp_path / "nope", mnt], "does not exist"
    if case == "source is a file":
        (tmp_path / "file").write_text("x")
        return [tmp_path / "file", mnt], "not a folder"
    if case == "missing mount point":
        return [src, tmp_path / "nope"], "does not exist"
    if case == "mount point is a file":
        (tmp_path / "file").write_text("x")
        return [src, tmp_path / "file"], "not a folder"
    if case == "already mounted":
        existing = mounts.foreground(src)
        return [src, existing.mnt], "already mounted"
    if case == "mount point hides the source":
        return [src, src], "hide the source"
    if case == "corrupt index":
        (src / ".tartape").mkdir(exist_ok=True)
        (src / ".tartape" / "index.db").write_bytes(b"not an index" * 100)
        return [src, mnt], "index.db"
    if case == "index damaged inside":
        index = tmp_path / "damaged.db"
        subprocess.run([*TARTAPE, "record", str(src), "--index", str(index)], check=True, capture_output=True)
        with sqlite3.connect(index) as db:  # the members' page; their metadata stays readable
            page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'members'").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
        with open(index, "r+b") as fh:
            fh.seek((page - 1) * size + 100)
            fh.write(b"Z" * 1024)
        return [src, mnt, "--index", index], "damaged index"
    if case == "mount point not empty":
        (mnt / "precious.txt").write_text("would be hidden")
        return [src, mnt], "not empty"
    if case == "index of another source":
        other = build_small_tree(tmp_path, "other")
        index = tmp_path / "other.db"
        subprocess.run([*TARTAPE, "record", str(other), "--index", str(index)], check=True,
                       capture_output=True)
        return [src, mnt, "--index", index], "recorded from"
    if case == "unknown option":
        return [src, mnt, "--frobnicate"], "unrecognized arguments"
    raise AssertionError(case)


def _files_below(top: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of everything below ``top``, without entering mounts, and
    without the logs of mounts the test made itself (their daemons may still be writing)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        filenames = [f for f in filenames if not (f.startswith("mount") and f.endswith(".log"))]
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("case", ["missing source", "source is a file", "missing mount point",
                                  "mount point is a file", "already mounted",
                                  "mount point hides the source", "corrupt index", "index damaged inside",
                                  "mount point not empty", "index of another source",
                                  "unknown option"])
def test_bad_input_gives_one_line_and_nonzero_exit(mounts, tmp_path, case):
    (tmp_path / "mnt").mkdir()
    args, reason = _bad_case(tmp_path, mounts, case)
    before = _files_below(tmp_path)
    done = run_mount_cli(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], done.stderr
    # The message names the path (or option) at fault.
    assert any(str(a) in lines[0] for a in args), lines[0]
    assert daemon_pids(args[1]) == []
    assert _files_below(tmp_path) == before, "nothing may be written"


@contextmanager
def fuse_device_mode(mode: int):
    """/dev/fuse with ``mode`` for the duration (systems differ: 0666 on most, 0600 here)."""
    before = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


def test_a_user_without_access_to_dev_fuse_gets_one_line(world_dir):
    src = build_small_tree(world_dir)
    mnt = world_dir / "mnt"
    mnt.mkdir()
    with fuse_device_mode(0o600):
        done = run_as_nobody("tartapefs.mount", src, mnt)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tartape-mount: /dev/fuse: permission denied"), done.stderr
    assert "chmod 0666 /dev/fuse" in lines[0] and "mount as root" in lines[0]
    assert daemon_pids(mnt) == [] and mounted_fstype(mnt) is None
    assert not (src / ".tartape").exists()


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_user_mounts_reads_and_unmounts_their_own_archive(world_dir):
    src = build_small_tree(world_dir)
    # First: `tartape stream` keeps its index in SRC/.tartape, whose creation changes SRC's mtime.
    reference = sha256(stream_bytes(src))
    mnt, state = world_dir / "mnt", world_dir / "state"
    for folder in (mnt, state):
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
    # -f: the background mode re-executes the interpreter, which may live where nobody
    # cannot go; the modules are loaded as root, then the process becomes nobody.
    code = ("import os, sys; from tartapefs.mount import main; import tartapefs.daemon; "
            f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); sys.exit(main(sys.argv[1:]))")
    with fuse_device_mode(0o666):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(src), str(mnt), "-f", "--index", str(state / "index.db"),
             "--log-file", str(state / "mount.log")],
            cwd="/", env=daemon_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        try:
            def up() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"tartape-mount as nobody exited {proc.returncode}: "
                                f"{proc.stderr.read().decode(errors='replace')}")
                return mounted_fstype(mnt) == "fuse.tartapefs"

            wait_until(up, "a mount made by nobody")
            read = as_nobody("cat", mnt / NAME)
            assert read.returncode == 0, read.stderr
            assert sha256(read.stdout) == reference
            # The mount is the user's own: the user takes it down, and the daemon exits 0.
            done = as_nobody("fusermount3", "-u", mnt)
            assert done.returncode == 0, done.stderr
            assert proc.wait(timeout=DEADLINE_S) == 0
            assert mounted_fstype(mnt) is None
        finally:
            force_unmount(mnt)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.usefixtures("hot_path")  # the daemon and the reference stream inherit the path
def test_hard_tree_through_the_mount(hard_tree, mounts, tmp_path):
    """Every hard corner (long and non-UTF-8 names, hard links, old and far mtimes) read by
    GNU tar through the mount."""
    mount = mounts.background(hard_tree.root)
    assert file_sha256(mount.file) == sha256(stream_bytes(hard_tree.root))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(mount.file), "-C", str(out)], check=True, env=C_LOCALE,
                   capture_output=True)
    assert tree_differences(hard_tree.root, out / hard_tree.root.name) == []
