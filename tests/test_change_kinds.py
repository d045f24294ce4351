"""What a change in the source does, member kind by member kind (README, "When the source
changes"): a regular file's bytes come from the source, so reads of a changed file fail (see
test_integrity.py); a folder's, a symlink's and a hard link's bytes come from the index alone
(name, mode, mtime, link target), so they are served as recorded whatever happened since, by the
reader and the stream alike, and `tartape verify` lists them as `differs`, not `changed`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tartapefs import TapePlayer, TapeReader
from tartapefs.stream import FILE_DATA
from trees import _Builder, archive_of, content, record

pytestmark = pytest.mark.index

TARTAPE = Path(sys.executable).parent / "tartape"


def build(parent: Path) -> Path:
    root = parent / "data"
    b = _Builder(root)
    b.dir(b"folder")
    b.file(b"folder/f.txt", content(b"f", 700))
    b.dir(b"empty")
    b.file(b"a.bin", content(b"a", 1500))
    b.hardlink(b"b.bin", b"a.bin")
    b.symlink(b"link", b"folder/f.txt")
    b.finish()
    return root


def retarget(root: Path) -> None:
    os.unlink(root / "link")
    os.symlink("a.bin", root / "link")


def replace_link(root: Path) -> None:
    os.unlink(root / "b.bin")
    (root / "b.bin").write_bytes(content(b"a", 1500))


# change -> (the member it touches, files whose reads fail with it)
CHANGES = {
    "folder permissions": ("data/folder/", lambda root: os.chmod(root / "folder", 0o700), ()),
    "folder gained a file": ("data/folder/", lambda root: (root / "folder" / "new").write_text("x"), ()),
    "folder deleted": ("data/empty/", lambda root: os.rmdir(root / "empty"), ()),
    "symlink retargeted": ("data/link", retarget, ()),
    "symlink deleted": ("data/link", lambda root: os.unlink(root / "link"), ()),
    # One link fewer moves the ctime of the inode the first name still holds: that file fails.
    "hard link deleted": ("data/b.bin", lambda root: os.unlink(root / "b.bin"), ("data/a.bin",)),
    "hard link replaced by a copy": ("data/b.bin", replace_link, ("data/a.bin",)),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_folder_symlink_or_link_is_served_as_recorded_and_verify_says_so(tmp_path, change):
    root = build(tmp_path)
    tape = record(root)
    expected = archive_of(tape)
    name, mutate, failing = CHANGES[change]
    mutate(root)
    m = tape.locate(name)
    with TapeReader(tape) as reader:
        assert reader.read(m.offset, m.end - m.offset) == expected[m.offset:m.end]
        if not failing:
            assert reader.read(0, tape.total_size) == expected
    if not failing:
        assert b"".join(e.data for e in TapePlayer(tape).play() if e.type == FILE_DATA) == expected
    done = subprocess.run([TARTAPE, "verify", str(root)], capture_output=True, text=True)
    assert done.returncode == 1
    tags = dict(line.split("\t")[1::-1] for line in done.stdout.splitlines())
    assert tags.get(name) == "differs", done.stdout
    assert {n for n, tag in tags.items() if tag == "changed"} == set(failing), done.stdout
    differing = sum(tag == "differs" for tag in tags.values())
    said = ("1 folder, symlink or link differs from the source but is served as recorded" if differing == 1
            else f"{differing} folders, symlinks or links differ from the source but are served as recorded")
    assert said in done.stderr and ("record again" in done.stderr) == bool(failing), done.stderr
