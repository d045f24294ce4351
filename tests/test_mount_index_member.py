"""Real mounts with --index-member and --ratarmount-index: the archive with its index member
read through FUSE by GNU tar, bsdtar and tarfile; `tartape extract` from nginx serving the
mount, the bytes it transferred counted from nginx's access log; ratarmount's index copied with
the archive by rclone, and ratarmount mounting the copy at once, without a scan."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agekit import keygen
from mountutil import DEADLINE_S, NEEDS_MOUNT, TARTAPE, run_mount_cli
from nginxutil import NGINX, nginx  # noqa: F401  (nginx: the fixture)
from tartapefs import Recording
from tartapefs.cli import main
from tartapefs.index import INDEX_MEMBER
from test_index_member import csv_rows, tarfile_rows
from test_ratarindex import tree
from test_readers import unexpected_stderr
from test_shards import SHARD, build_sample_tree
from trees import _Builder, content, tree_differences

pytestmark = NEEDS_MOUNT

RATARMOUNT = Path(sys.executable).parent / "ratarmount"
MTIME_NS = 1_650_000_000_000_000_000


def test_the_mounted_archive_and_its_index_member_read_with_tar_bsdtar_and_tarfile(mounts, tmp_path):
    src = build_sample_tree(tmp_path)
    m = mounts.foreground(src, None, "--index-member")
    data = m.file.read_bytes()
    # The recording made by the mount, streamed by the command: the same bytes.
    assert subprocess.run([*TARTAPE, "stream", str(src)], capture_output=True, check=True).stdout == data
    rows, index = tarfile_rows(data)
    assert csv_rows(index)[1:] == rows
    for tar in ("tar", "bsdtar"):
        done = subprocess.run([tar, "-tvf", str(m.file)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.splitlines()[-1].endswith("photos/photos.tarindex.csv")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(["tar", "-xpf", str(m.file), "-C", str(out)], capture_output=True)
    assert done.returncode == 0 and unexpected_stderr(done) == [], done.stderr
    assert tree_differences(src, out / "photos") == ["unexpected b'photos.tarindex.csv'"]
    assert (out / "photos" / "photos.tarindex.csv").read_bytes() == index


def test_shards_through_the_mount_each_carry_their_index_member_and_ratarmount_index(mounts, tmp_path):
    src = build_sample_tree(tmp_path)
    m = mounts.foreground(src, None, "--shard-size", str(SHARD), "--index-member", "--ratarmount-index",
                          name="photos.wids.json")
    with Recording.discover(str(src)) as recording:
        tapes = recording.tapes()
        assert sorted(os.listdir(m.mnt)) == sorted([t.name for t in tapes] + [f"{t.name}.index.sqlite" for t in tapes]
                                                   + ["photos.wids.json"])
        for tape in tapes:
            data = (m.mnt / tape.name).read_bytes()
            rows, index = tarfile_rows(data)
            assert csv_rows(index)[1:] == rows and len(data) == tape.total_size
            sidecar = m.mnt / f"{tape.name}.index.sqlite"
            assert sidecar.read_bytes()[:16] == b"SQLite format 3\0"
            assert os.stat(sidecar).st_mtime == tape.mtime


@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (Debian package nginx)")
def test_extract_from_nginx_serving_the_mount_fetches_the_member_and_the_index_member_only(
        world_dir, world_mounts, nginx):  # noqa: F811
    src = world_dir / "data"
    b = _Builder(src)
    for d in range(3):
        b.dir(b"d%d" % d)
        for i in range(1500):  # an index member well past the 64 KiB tail read first
            b.file(b"d%d/f%05d.txt" % (d, i), content(b"%d/%d" % (d, i), 20 + i % 300))
    big = content(b"wanted", (1 << 20) + 333)
    b.file(b"d1/wanted.bin", big, mode=0o640, mtime_ns=MTIME_NS)
    b.finish()
    mount = world_mounts.background(src, None, "-o", "allow_other", "--index-member")
    with Recording.discover(str(src)) as recording:
        index_size = recording.tapes()[0].generated_file(INDEX_MEMBER).size
    assert index_size > 200_000
    served = nginx(mount.mnt, access_log=True)
    dest = world_dir / "out"
    dest.mkdir()
    url = f"{served.url}/dataset.tar"
    assert main(["extract", url, "data/d1/wanted.bin", "-C", str(dest)]) == 0
    out = dest / "data" / "d1" / "wanted.bin"
    st = os.stat(out)
    assert out.read_bytes() == big
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME_NS)
    requests = served.requests(at_least=len(big) + index_size)
    assert requests and all(status == 206 for status, _, _ in requests), requests
    sent = sum(n for _, n, _ in requests)
    # The bound: under 2 MiB + the index member. What it is: the member, the index
    # member, the 64 KiB tail, a few header blocks.
    assert len(big) + index_size <= sent < (2 << 20) + index_size, (sent, requests)
    assert sent <= len(big) + index_size + 96 * 1024, (sent, requests)


@pytest.mark.skipif(not RATARMOUNT.exists(), reason="ratarmount is not installed (the test extra installs it)")
@pytest.mark.skipif(not shutil.which("rclone"), reason="rclone is not installed")
def test_rclone_copies_ratarmount_index_with_the_archive_and_ratarmount_mounts_it_without_a_scan(mounts, tmp_path):
    src = build_sample_tree(tmp_path)
    m = mounts.foreground(src, None, "--ratarmount-index", "--index-member")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    rclone_copy(m.mnt, ours)
    assert sorted(os.listdir(ours)) == ["dataset.tar", "dataset.tar.index.sqlite"]
    for name in os.listdir(ours):
        assert (ours / name).read_bytes() == (m.mnt / name).read_bytes()
        assert os.stat(ours / name).st_mtime == os.stat(m.mnt / name).st_mtime  # rclone keeps them
    theirs.mkdir()
    shutil.copy(ours / "dataset.tar", theirs / "dataset.tar")  # the archive alone: ratarmount scans it
    before = (ours / "dataset.tar.index.sqlite").read_bytes()
    our_output, our_tree = ratarmount_tree(ours / "dataset.tar")
    their_output, their_tree = ratarmount_tree(theirs / "dataset.tar")
    assert "Successfully loaded offset dictionary" in our_output and "Creating" not in our_output, our_output
    assert "Creating offset dictionary" in their_output, their_output  # the scan ours spared
    assert our_tree == their_tree and "photos/photos.tarindex.csv" in our_tree
    assert (ours / "dataset.tar.index.sqlite").read_bytes() == before  # loaded, not rewritten


def rclone_copy(src: Path, dest: Path) -> None:
    done = subprocess.run(["rclone", "copy", "--config", os.devnull, str(src), str(dest)], capture_output=True,
                          text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr


def ratarmount_tree(archive: Path) -> tuple[str, dict]:
    """ratarmount mounts ``archive`` (beside it, its index if there is one): what it said,
    and the tree it showed. Always unmounted."""
    mnt = archive.parent / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run([str(RATARMOUNT), str(archive), str(mnt)], capture_output=True, text=True,
                              timeout=DEADLINE_S, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr, tree(mnt)
    finally:
        if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        mnt.rmdir()


@pytest.mark.skipif(not RATARMOUNT.exists(), reason="ratarmount is not installed (the test extra installs it)")
@pytest.mark.skipif(not shutil.which("rclone"), reason="rclone is not installed")
def test_a_refresh_gives_a_new_index_member_and_ratarmount_index_that_ratarmount_loads(mounts, tmp_path):
    """Unchanged, a refresh keeps both files; after a change that moves no member's mtime
    (a mode), the archive and its ratarmount index are new files, and ratarmount loads the
    copy rclone makes again without a scan, showing the new tree."""
    src = build_sample_tree(tmp_path)
    m = mounts.foreground(src, None, "--ratarmount-index", "--index-member")
    sidecar = m.mnt / "dataset.tar.index.sqlite"
    before = {p: os.stat(p) for p in (m.file, sidecar)}
    assert run_mount_cli("--refresh", m.mnt).stdout.strip().endswith("unchanged; generation 1 keeps serving")
    assert {p: os.stat(p).st_ino for p in before} == {p: st.st_ino for p, st in before.items()}
    copy = tmp_path / "copy"
    rclone_copy(m.mnt, copy)
    (src / "odd" / "a.txt").chmod(0o600)
    done = run_mount_cli("--refresh", m.mnt)
    assert done.returncode == 0 and "generation 2 serving" in done.stdout, done.stderr
    after = {p: os.stat(p) for p in (m.file, sidecar)}
    for p in (m.file, sidecar):
        assert after[p].st_ino != before[p].st_ino and after[p].st_mtime == before[p].st_mtime + 1
    data = m.file.read_bytes()
    rows, index = tarfile_rows(data)
    assert csv_rows(index)[1:] == rows  # the index member of the archive it ends
    rclone_copy(m.mnt, copy)  # the new mtime: both copied again
    for name in ("dataset.tar", "dataset.tar.index.sqlite"):
        assert (copy / name).read_bytes() == (m.mnt / name).read_bytes()
    output, seen = ratarmount_tree(copy / "dataset.tar")
    assert "Successfully loaded offset dictionary" in output and "Creating" not in output, output
    assert stat.S_IMODE(seen["photos/odd/a.txt"][0]) == 0o600


def test_a_mount_with_encryption_refuses_ratarmount_index_in_one_line_and_mounts_nothing(tmp_path):
    src = build_sample_tree(tmp_path)
    key = keygen(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_mount_cli(src, mnt, "--encrypt-to", key.public, "--ratarmount-index", "--log-file",
                         tmp_path / "mount.log")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["tartape-mount: --ratarmount-index: not with --encrypt-to (ratarmount's "
                                        "index, served beside the .age file, would show in plain what it holds)"]
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
