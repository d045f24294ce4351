"""The index folder and a found index, when SRC belongs to someone else (docs/SECURITY.md).

The owner of SRC (user nobody here) plants links and files where root's ``tartape`` writes
its index, or plants an index of their own; root must never write through them, never
delete what it did not make, and never trust an index it did not write unless told to.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, NOBODY, TARTAPE, bounded, one_line, run_as_nobody
from trees import build_small_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

PRECIOUS = b"root's precious file\n"
PIDS_AHEAD = 3000  # decoys for this many pids after the last one handed out


def nobody_runs(code: str, *args: str | Path) -> None:
    """Python ``code`` (the os module only) run as user nobody, with ``args`` in sys.argv."""
    wrapper = (f"import os, sys; os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); "
               "exec(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", wrapper, code, *map(str, args)], capture_output=True,
                          text=True, cwd="/")
    assert done.returncode == 0, done.stderr


@pytest.fixture
def nobodys_src(world_dir):
    """A small tree that belongs to nobody, and a folder of root's beside it holding a file
    root cares about: (src, victim file)."""
    src = build_small_tree(world_dir)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(src)], check=True)
    victim = world_dir / "victim"
    victim.mkdir()
    (victim / "index.db").write_bytes(PRECIOUS)
    return src, victim / "index.db"


def plant_temporaries(folder: Path, victim: Path) -> None:
    """Links named as the old recorder named its temporary file, for the next pids."""
    first = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    nobody_runs("import os, sys\nfolder, victim, first, n = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])\n"
              "for pid in range(first, first + n):\n"
              "    os.symlink(victim, os.path.join(folder, f'index.db.{pid}.tmp'))\n",
              folder, victim, first, PIDS_AHEAD)


# --- finding 1: root writes through planted links --------------------------------------------


@pytest.mark.index
def test_a_symlink_planted_as_src_tartape_is_refused_and_nothing_is_written_through_it(nobodys_src):
    src, victim = nobodys_src
    nobody_runs("import os, sys; os.symlink(sys.argv[2], sys.argv[3])", victim.parent, src / ".tartape")
    for command in (["record", src], ["stream", src, "-o", src.parent / "out.tar"]):
        line = one_line(bounded([*TARTAPE, *command]))
        assert ".tartape" in line and "symlink" in line, line
    assert victim.read_bytes() == PRECIOUS and sorted(os.listdir(victim.parent)) == ["index.db"]


@pytest.mark.index
def test_a_src_tartape_of_the_owner_of_src_is_refused_and_planted_temporaries_never_written(nobodys_src):
    """The owner of SRC makes .tartape theirs and fills it with links named as temporaries."""
    src, victim = nobodys_src
    nobody_runs("import os, sys; os.mkdir(sys.argv[2]); os.chmod(sys.argv[2], 0o777)", src / ".tartape")
    plant_temporaries(src / ".tartape", victim)
    line = one_line(bounded([*TARTAPE, "record", src]))
    assert ".tartape" in line and f"uid {NOBODY}" in line, line
    assert victim.read_bytes() == PRECIOUS
    assert len(os.listdir(src / ".tartape")) == PIDS_AHEAD  # nothing added, nothing removed


@pytest.mark.index
def test_links_planted_in_a_shared_index_folder_are_never_written_through(nobodys_src, world_dir):
    """--index in a folder everyone may write (as /tmp): the temporary file is made with
    O_EXCL | O_NOFOLLOW under a name no one can guess, so no planted link is ever opened."""
    src, victim = nobodys_src
    shared = world_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    plant_temporaries(shared, victim)
    done = bounded([*TARTAPE, "record", src, "--index", shared / "index.db"])
    assert done.returncode == 0, done.stderr
    assert victim.read_bytes() == PRECIOUS
    assert sqlite3.connect(shared / "index.db").execute("SELECT count(*) FROM members").fetchone()[0] > 0
    links = [name for name in os.listdir(shared) if name != "index.db"]
    assert len(links) == PIDS_AHEAD and all((shared / name).is_symlink() for name in links)


def dead_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


@pytest.mark.index
def test_stale_temporary_cleanup_never_removes_what_it_did_not_create(nobodys_src, world_dir):
    src, _ = nobodys_src
    shared = world_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    pid = dead_pid()
    decoys = [f"index.db.{pid}.tmp", f"index.db.{pid}.0123456789abcdef.tmp"]
    nobody_runs("import sys\nfor path in sys.argv[2:]:\n    open(path, 'w').write('nobody')\n",
              *(shared / name for name in decoys))
    done = bounded([*TARTAPE, "record", src, "--index", shared / "index.db"])
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(shared)) == sorted(["index.db", *decoys])
    # What a killed recorder of root's own left is still cleaned up.
    mine = shared / f"index.db.{pid}.fedcba9876543210.tmp"
    mine.write_bytes(b"half an index")
    assert bounded([*TARTAPE, "record", src, "--index", shared / "index.db"]).returncode == 0
    assert not mine.exists()


@pytest.mark.index
def test_a_failed_start_never_removes_a_file_found_under_the_temporary_name(tmp_path, monkeypatch):
    """Should the unguessable name be taken after all, the writer fails and leaves that file."""
    from tartapefs import TartapeError
    from tartapefs.indexwriter import IndexWriter
    from tartapefs.indexdir import IndexFolder

    taken = tmp_path / "index.db.1.0123456789abcdef.tmp"
    taken.write_bytes(PRECIOUS)
    monkeypatch.setattr(IndexFolder, "temporary_name", staticmethod(lambda base: taken.name))
    with pytest.raises(TartapeError, match="cannot create the index"):
        IndexWriter(str(tmp_path / "index.db"))
    assert taken.read_bytes() == PRECIOUS and sorted(os.listdir(tmp_path)) == [taken.name]


# --- finding 2: an index planted by the owner of SRC -----------------------------------------------


def record_as_nobody(src: Path) -> Path:
    done = run_as_nobody("tartapefs.cli", "record", src)
    assert done.returncode == 0, done.stderr
    index = src / ".tartape" / "index.db"
    assert os.stat(index).st_uid == NOBODY
    return index


@pytest.mark.index
def test_an_index_of_the_owner_of_src_is_not_trusted_by_root_unless_named(nobodys_src):
    src, _ = nobodys_src
    index = record_as_nobody(src)
    for command in ("ls", "info", "verify", "stream"):
        line = one_line(bounded([*TARTAPE, command, src]))
        assert str(index) in line and "not trusted" in line and "--index" in line, line
    named = bounded([*TARTAPE, "ls", src, "--index", index])
    assert named.returncode == 0 and "data/a.txt" in named.stdout, named.stderr


@pytest.mark.index
@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_index_others_may_write_is_not_trusted_unless_named(small_tree, what):
    done = bounded([*TARTAPE, "record", small_tree])
    assert done.returncode == 0, done.stderr
    index = small_tree / ".tartape" / "index.db"
    os.chmod(index if what == "file" else index.parent, 0o666 if what == "file" else 0o777)
    line = one_line(bounded([*TARTAPE, "ls", small_tree]))
    assert "not trusted" in line and "lets others write" in line, line
    assert bounded([*TARTAPE, "ls", small_tree, "--index", index]).returncode == 0


@NEEDS_MOUNT
def test_mount_of_a_folder_holding_an_index_of_its_owner_refuses_in_one_line(nobodys_src, world_mounts):
    src, _ = nobodys_src
    index = record_as_nobody(src)
    _, done = world_mounts.attempt(src)
    line = one_line(done)
    assert str(index) in line and "not trusted" in line, line
    named = world_mounts.background(src, None, "--index", str(index))
    assert named.file.stat().st_size > 0
