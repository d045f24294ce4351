"""Recording under faults: unreadable entries, a full disk, interruption, a newer index.

In every case the previous index must survive intact and the user gets one line.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mountutil import PRELOAD
from tartapefs import Tape, TapeReader, TapeRecorder
from tartapefs.errors import IndexCorruptError, IndexVersionError, TartapeError
from mountutil import tmpfs
from tartapefs.index import seal

pytestmark = pytest.mark.index

NOBODY = 65534
TARTAPE = [sys.executable, "-m", "tartapefs.cli"]


def one_line_failure(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def many_files(root: Path, count: int, per_dir: int = 1000) -> None:
    for i in range(count):
        d = root / f"d{i // per_dir:04}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}").write_bytes(b"x")


@pytest.fixture
def world_tree():
    """A tree that an unprivileged user can walk (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="tartapefs-world-"))
    os.chmod(top, 0o755)
    src = top / "data"
    (src / "open").mkdir(parents=True)
    (src / "open" / "a.txt").write_text("readable")
    (src / "secret.txt").write_text("root only")
    os.chmod(src / "secret.txt", 0o600)
    (src / "closed").mkdir()
    (src / "closed" / "b.txt").write_text("behind a closed folder")
    os.chmod(src / "closed", 0o700)
    state = top / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    try:
        yield src, state
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.usefixtures("hot_path")  # the recording child inherits the path
def test_unreadable_entries_are_named_at_record_time_and_nothing_is_written(world_tree):
    src, state = world_tree
    # Import (and build the parser, which imports lazily) first, then drop to nobody: the
    # interpreter itself may live where nobody can read nothing.
    code = (
        f"import os, sys, locale, gettext; from tartapefs.cli import main, _parser; _parser(); {PRELOAD}"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); sys.exit(main(sys.argv[1:]))"
    )
    index = state / "index.db"
    proc = subprocess.run([sys.executable, "-c", code, "record", str(src), "--index", str(index)],
                          capture_output=True, cwd="/")
    last = one_line_failure(proc)
    assert "2 entries cannot be read" in last and "--exclude" in last
    err = proc.stderr.decode()
    assert "data" not in err or ("secret.txt: cannot be read" in err and "closed: cannot be read" in err)
    assert not index.exists() and os.listdir(state) == []
    # leaving them out makes the recording work
    ok = subprocess.run([sys.executable, "-c", code, "record", str(src), "--index", str(index),
                         "--exclude", "secret.txt", "--exclude", "closed"], capture_output=True, cwd="/")
    assert ok.returncode == 0, ok.stderr
    assert [m.arc_path for m in Tape.open(str(index)).members()] == ["data/", "data/open/", "data/open/a.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_while_writing_the_index_leaves_the_previous_one(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk, "256k"):
        src = tmp_path / "data"
        many_files(src, 10)
        index = disk / "index.db"
        before = TapeRecorder(str(src), index_path=str(index)).commit()
        with Tape.open(str(index)) as tape:
            count = tape.member_count
        many_files(src, 20_000)  # far more rows than 256 KiB can hold
        proc = subprocess.run([*TARTAPE, "record", str(src), "--index", str(index)], capture_output=True)
        last = one_line_failure(proc)
        assert str(index) in last and "previous index is unchanged" in last
        with Tape.open(str(index)) as tape:
            assert tape.fingerprint == before and tape.member_count == count
        assert os.listdir(disk) == ["index.db"]  # no temporary file left behind


def _interrupt_record(src: Path, index: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a record, wait until its temporary index exists, then send ``sig``."""
    proc = subprocess.Popen([*TARTAPE, "record", str(src), "--index", str(index)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(n.endswith(".tmp") for n in os.listdir(index.parent)):
        assert proc.poll() is None, "record finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def recorded_then_grown(tmp_path):
    src = tmp_path / "data"
    many_files(src, 5)
    index = tmp_path / "idx" / "index.db"
    index.parent.mkdir()
    before = TapeRecorder(str(src), index_path=str(index)).commit()
    many_files(src, 60_000)  # long enough to interrupt mid-way
    return src, index, before


def test_sigint_during_record_leaves_the_previous_index_and_no_temporary(recorded_then_grown):
    src, index, before = recorded_then_grown
    proc = _interrupt_record(src, index, signal.SIGINT)
    assert proc.returncode == 130 and "interrupted" in one_line_failure(proc)
    with Tape.open(str(index)) as tape:
        assert tape.fingerprint == before
    assert os.listdir(index.parent) == ["index.db"]


def test_an_interrupt_before_the_temporary_descriptor_is_held_leaves_no_temporary(tmp_path, monkeypatch):
    """The window a SIGINT hits at random in the test above, made certain: the file is made,
    and KeyboardInterrupt comes before its descriptor reaches the writer."""
    from tartapefs.indexwriter import IndexWriter
    from tartapefs.indexdir import IndexFolder

    made = IndexFolder.create

    def create_then_interrupt(self, name):
        made(self, name)
        raise KeyboardInterrupt

    monkeypatch.setattr(IndexFolder, "create", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        IndexWriter(str(tmp_path / "index.db"))
    assert os.listdir(tmp_path) == []


def test_sigkill_during_record_leaves_the_previous_index_and_the_next_record_cleans_up(recorded_then_grown):
    src, index, before = recorded_then_grown
    proc = _interrupt_record(src, index, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    with Tape.open(str(index)) as tape:
        assert tape.fingerprint == before
    left = [n for n in os.listdir(index.parent) if n.endswith(".tmp")]
    assert left, "a killed recorder leaves its temporary file"
    after = TapeRecorder(str(src), index_path=str(index)).commit()
    assert after != before and os.listdir(index.parent) == ["index.db"]


@pytest.fixture
def small_index(tmp_path):
    """A three-file folder recorded into tmp_path/index.db: (source, index)."""
    src = tmp_path / "data"
    many_files(src, 3)
    index = tmp_path / "index.db"
    TapeRecorder(str(src), index_path=str(index)).commit()
    return src, index


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [("format_version", 99, "index format version 99,"), ("bytes_version", 1, "byte rules version 1,")],
    ids=["newer index format", "older byte rules"],
)
def test_an_index_of_another_version_is_refused_in_one_line(small_index, key, value, said):
    src, index = small_index
    with sqlite3.connect(index) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    with pytest.raises(IndexVersionError, match=said):
        Tape.open(str(index))
    proc = subprocess.run([*TARTAPE, "info", str(src), "--index", str(index)], capture_output=True)
    assert said in one_line_failure(proc)


def test_the_index_is_private_0600_in_a_0700_folder(tmp_path):
    src = tmp_path / "data"
    many_files(src, 3)
    TapeRecorder(str(src)).commit()
    folder = src / ".tartape"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "index.db").stat().st_mode & 0o777 == 0o600


def test_recording_a_file_instead_of_a_folder_is_a_usage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TartapeError, match="not a directory"):
        TapeRecorder(str(tmp_path / "f"))


def test_a_header_size_that_disagrees_with_the_byte_rules_never_serves_shifted_bytes(small_index):
    _, index = small_index
    with sqlite3.connect(index) as db:  # as an index of older rules would say
        db.execute("UPDATE members SET header_size = 1024 WHERE offset = (SELECT max(offset) FROM members)")
        # the tape grown to match, so that the offsets still add up and only the bytes disagree
        db.execute("UPDATE tapes SET total_size = total_size + 512")
    seal(str(index))  # its checksum made to match, as whoever wrote it would
    with Tape.open(str(index)) as tape, TapeReader(tape) as reader:
        last = list(tape.members())[-1]
        with pytest.raises(IndexCorruptError, match="record the tape again"):
            reader.read(last.offset, 10)
