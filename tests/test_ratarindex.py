"""The ratarmount index tartapefs writes, checked by ratarmount itself: the same rows as the
index ratarmount builds by scanning, and a mount that loads ours instead of scanning."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mountutil import DEADLINE_S, NEEDS_MOUNT
from tartapefs import MemoryTape, write_ratarmount_index
from tartapefs.errors import ArchiveError
from tartapefs.ratarindex import SidecarCatalogue

RATARMOUNT = Path(sys.executable).parent / "ratarmount"
needs_ratarmount = pytest.mark.skipif(not RATARMOUNT.exists(),
                                      reason="ratarmount is not installed (the test extra installs it)")


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute('SELECT * FROM "files"'), key=repr)


def ratarmount(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(RATARMOUNT), *map(str, args)], capture_output=True, text=True,
                          timeout=DEADLINE_S, stdin=subprocess.DEVNULL)


@pytest.mark.index
@needs_ratarmount
def test_our_rows_are_the_rows_ratarmount_builds_by_scanning(tmp_path, hard_tape, hard_archive):
    """The hard tree: PAX headers, 4000-byte paths, names not UTF-8 or with newlines, hard
    links, symlinks, empty folders, mtimes before 1970 and after 2242."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "dataset.tar").write_bytes(hard_archive)
    size = write_ratarmount_index(str(ours / "dataset.tar.index.sqlite"), hard_tape.members(),
                                  hard_tape.total_size, hard_tape.mtime)
    assert size == os.path.getsize(ours / "dataset.tar.index.sqlite")
    done = ratarmount("--no-mount", "--index-file", theirs / "index.sqlite", theirs / "dataset.tar")
    assert done.returncode == 0, done.stderr
    assert rows(ours / "dataset.tar.index.sqlite") == rows(theirs / "index.sqlite")


@pytest.mark.index
def test_the_index_is_deterministic_and_folders_without_members_are_generated(tmp_path):
    def write(path: Path) -> bytes:
        tape = MemoryTape(index_member=True, mtime=1_700_000_000)
        tape.add_bytes("a/b/c.txt", b"c")
        tape.add_dir("a/b")
        tape.add_bytes("top.txt", b"t")
        write_ratarmount_index(str(path), tape.members(), tape.total_size, 1_700_000_000)
        return path.read_bytes()

    assert write(tmp_path / "1.sqlite") == write(tmp_path / "2.sqlite")
    names = [(r[0], r[1], r[2]) for r in rows(tmp_path / "1.sqlite")]
    assert names == sorted([("", "a", 0), ("/a/b", "c.txt", 0), ("/a", "b", 1024), ("", "top.txt", 1536),
                            ("", "dataset.tarindex.csv", 2560)], key=repr)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.index
def test_a_sidecar_of_another_archive_or_no_index_at_all_is_refused(tmp_path):
    tape = MemoryTape(mtime=0)
    tape.add_bytes("a", b"a")
    write_ratarmount_index(str(tmp_path / "x.sqlite"), tape.members(), tape.total_size, 0)
    with pytest.raises(ArchiveError, match="made for an archive of 2048 bytes, not 4096"):
        SidecarCatalogue(str(tmp_path / "x.sqlite"), 4096)
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ArchiveError, match="junk.sqlite"):
        SidecarCatalogue(str(tmp_path / "junk.sqlite"), 4096)


def tree(root: Path) -> dict[str, tuple]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = os.lstat(path)
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else os.readlink(path) \
                if path.is_symlink() else None
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size if content is not None else 0,
                                                  int(st.st_mtime), content)
    return found


@NEEDS_MOUNT
@needs_ratarmount
def test_ratarmount_mounts_from_our_index_without_scanning_and_shows_the_same_tree(tmp_path):
    tape = MemoryTape(index_member=True, mtime=1_700_000_000)
    for i in range(300):
        tape.add_bytes(f"seg/{i // 100}/{i:04d}.csv", b"%d," % i * i, mtime=1_700_000_000 + i)
    tape.add_dir("empty", mode=0o700)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        with open(folder / "dataset.tar", "wb") as out:
            tape.copy_to(out)
    write_ratarmount_index(str(ours / "dataset.tar.index.sqlite"), tape.members(), tape.total_size, tape.total_size)
    before = (ours / "dataset.tar.index.sqlite").read_bytes()
    mounted = []
    try:
        listings = {}
        for folder in (ours, theirs):
            mnt = folder / "mnt"
            mnt.mkdir()
            done = ratarmount(folder / "dataset.tar", mnt)
            mounted.append(mnt)
            assert done.returncode == 0, done.stderr
            listings[folder.name] = (done.stdout + done.stderr, tree(mnt))
    finally:
        for mnt in mounted:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    our_output, our_tree = listings["ours"]
    their_output, their_tree = listings["theirs"]
    assert "Successfully loaded offset dictionary" in our_output and "Creating" not in our_output, our_output
    assert "Creating offset dictionary" in their_output, their_output  # the scan we spared
    assert our_tree == their_tree and len(our_tree) == 300 + 4 + 1 + 1  # files, seg and its 3 folders, empty, the index
    assert (ours / "dataset.tar.index.sqlite").read_bytes() == before  # loaded, not rewritten
