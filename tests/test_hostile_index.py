"""A hostile index (docs/SECURITY.md): damaged or forged, it costs a clear one-line error —
never a hang, a loop, unbounded memory, a traceback or a byte that was not recorded.

Each forgery edits a real recording with SQLite, as anyone who may write the index could.
Every command runs under a deadline: a loop is a failure detected by a timeout.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, TARTAPE, bounded, one_line
from tartapefs.index import seal
from trees import build_small_tree, record


# Reads the whole tape through the library in a child process (a loop can be cut short).
READ_ALL = """
import sys
from tartapefs import Tape, TapeReader, TartapeError
try:
    tape = Tape.open(sys.argv[1])
    with TapeReader(tape) as reader:
        got = 0
        for offset in range(0, tape.total_size, 1 << 16):
            got += len(reader.read(offset, 1 << 16))
except TartapeError as err:
    print(type(err).__name__, err)
else:
    print("served", got, "of", tape.total_size)
"""


@pytest.fixture
def recorded(tmp_path):
    """The small tree recorded into tmp_path/index.db (outside SRC): (src, index path)."""
    src = build_small_tree(tmp_path)
    index = tmp_path / "index.db"
    record(src, index_path=str(index)).close()
    return src, index


def edit(index: Path, *statements: tuple) -> None:
    """Run SQL on the index, then seal it again (its checksum made to match), as whoever
    forges an index would."""
    with sqlite3.connect(index) as db:
        for sql, *args in statements:
            db.execute(sql, args)
    db.close()
    seal(str(index))


def shift_after(index: Path, offset: int, delta: int) -> None:
    """Move every member after ``offset`` by ``delta`` bytes, and the total with them (two
    steps through negative offsets, so that no step collides with another row)."""
    edit(index,
         ("UPDATE members SET offset = -(offset + ?) WHERE offset > ?", delta, offset),
         ("UPDATE members SET offset = -offset WHERE offset < 0",),
         ("UPDATE tapes SET total_size = total_size + ?", delta))


def second_member(index: Path) -> int:
    with sqlite3.connect(index) as db:
        (offset,) = db.execute("SELECT offset FROM members ORDER BY offset LIMIT 1 OFFSET 1").fetchone()
    db.close()
    return offset


# --- finding 3: offsets that do not add up -------------------------------------------------------


def total_raised(index: Path) -> None:
    edit(index, ("UPDATE tapes SET total_size = total_size + 4096",))


def gap(index: Path) -> None:
    shift_after(index, second_member(index), 512)


def overlap(index: Path) -> None:
    shift_after(index, second_member(index), -512)


def first_not_at_zero(index: Path) -> None:
    shift_after(index, -1, 512)


def huge_member_count(index: Path) -> None:
    edit(index, ("UPDATE meta SET value = 1000000000000 WHERE key = 'member_count'",),
         ("UPDATE tapes SET member_count = 1000000000000",))


REFUSED_AT_OPEN = [total_raised, first_not_at_zero, huge_member_count]
REFUSED_IN_THE_READ = [gap, overlap]


@pytest.mark.index
@pytest.mark.parametrize("forge", REFUSED_AT_OPEN + REFUSED_IN_THE_READ, ids=lambda f: f.__name__)
@pytest.mark.usefixtures("hot_path")  # the commands inherit the path of the read loop
def test_offsets_that_do_not_add_up_are_a_damaged_index_never_a_loop(recorded, forge):
    src, index = recorded
    forge(index)
    got = bounded([sys.executable, "-c", READ_ALL, index]).stdout.strip()
    assert got.startswith("IndexCorruptError") and str(index) in got, got
    out = src.parent / "out.tar"
    line = one_line(bounded([*TARTAPE, "stream", src, "--index", index, "-o", out]))
    assert str(index) in line and "damaged" in line, line
    assert not out.exists() and not Path(f"{out}.part").exists()
    if forge in REFUSED_AT_OPEN:  # O(1) at open: not even info or ls gets a tape
        for command in ("info", "ls"):
            assert "damaged" in one_line(bounded([*TARTAPE, command, src, "--index", index]))


@pytest.mark.index
@pytest.mark.parametrize("forge", REFUSED_IN_THE_READ, ids=lambda f: f.__name__)
@pytest.mark.usefixtures("hot_path")  # the commands inherit the path of the read loop
def test_a_read_that_starts_at_a_gap_or_an_overlap_fails_too(recorded, forge):
    """Not only a read coming from the member before: one that starts right at the member
    after the damage (a random reader, a resumed copy) must not get its bytes either."""
    from tartapefs import Tape, TapeReader
    from tartapefs.errors import IndexCorruptError

    src, index = recorded
    after = second_member(index)
    forge(index)
    with sqlite3.connect(index) as db:
        (moved,) = db.execute("SELECT min(offset) FROM members WHERE offset > ?", (after,)).fetchone()
    db.close()
    with Tape.open(str(index)) as tape:
        for start in (moved, moved + 1):
            with TapeReader(tape) as reader, pytest.raises(IndexCorruptError, match="damaged"):
                reader.read(start, 512)


@NEEDS_MOUNT
@pytest.mark.parametrize("forge", REFUSED_IN_THE_READ, ids=lambda f: f.__name__)
@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path of the read loop
def test_mount_offsets_that_do_not_add_up_are_eio_logged_once_and_the_daemon_answers(recorded, mounts, forge):
    src, index = recorded
    forge(index)
    mount = mounts.foreground(src, None, "--index", str(index), "--direct-io")
    code = ("import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nerrors = []\n"
            "for attempt in range(3):\n"
            "    try:\n        os.pread(fd, 1 << 20, 0)\n    except OSError as err:\n        errors.append(err.errno)\n"
            "print(*errors)\nos.statvfs(os.path.dirname(sys.argv[1]))\n")
    done = bounded([sys.executable, "-c", code, mount.file], on_hang=mount.proc.kill)
    assert done.returncode == 0 and done.stdout.split() == [str(errno.EIO)] * 3, done
    assert mount.proc.poll() is None, "the daemon must keep serving"
    logged = [line for line in mount.log_text().splitlines() if "damaged" in line]
    assert len(logged) == 1 and str(index) in logged[0], mount.log_text()


@NEEDS_MOUNT
@pytest.mark.parametrize("forge", REFUSED_AT_OPEN, ids=lambda f: f.__name__)
def test_mount_of_an_index_whose_offsets_do_not_add_up_is_refused_in_one_line(recorded, mounts, forge):
    src, index = recorded
    forge(index)
    _, done = mounts.attempt(src, None, "--index", str(index))
    line = one_line(done)
    assert str(index) in line and "damaged" in line, line


# --- finding 3: names that climb or are absolute --------------------------------------------------


@pytest.mark.index
@pytest.mark.parametrize("prefix", [b"../../etc", b"/etc", b"data/../..", b"a\0b"], ids=repr)
def test_a_prefix_that_is_absolute_or_climbs_is_refused_at_open(recorded, prefix):
    src, index = recorded
    edit(index, ("UPDATE meta SET value = ? WHERE key = 'prefix'", prefix))
    for command in ("info", "ls", "stream"):
        line = one_line(bounded([*TARTAPE, command, src, "--index", index]))
        assert str(index) in line and "prefix" in line, line


@pytest.mark.index
@pytest.mark.parametrize("source", [b"../../etc/passwd", b"/etc/passwd", b"sub/../../x", b"a.txt\0x"], ids=repr)
@pytest.mark.usefixtures("hot_path")  # the commands inherit the path of the read loop
def test_a_member_name_that_is_absolute_or_climbs_is_never_listed_or_served(recorded, source):
    src, index = recorded
    edit(index, ("UPDATE members SET source = ? WHERE source = ?", source, b"b.txt"))
    for command in ("ls", "stream", "verify"):
        done = bounded([*TARTAPE, command, src, "--index", index])
        line = one_line(done)
        assert str(index) in line and "damaged" in line, line
        assert b"etc/passwd" not in done.stdout.encode(errors="surrogateescape")


# --- finding 8: damaged rows and metadata: one line each, never a traceback -----------------------


def recreate_members_without_types(index: Path) -> None:
    """The members table made again with no column types or constraints: whatever SQLite is
    given is kept as given (text where numbers belong)."""
    with sqlite3.connect(index) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(members)")]
        db.execute("ALTER TABLE members RENAME TO old")
        db.execute(f"CREATE TABLE members ({', '.join(columns)})")
        db.execute("INSERT INTO members SELECT * FROM old")
        db.execute("DROP TABLE old")
    db.close()
    seal(str(index))


def kind_7(index):
    edit(index, ("UPDATE members SET kind = 7 WHERE source = ?", b"b.txt"))


def nul_in_a_name(index):
    edit(index, ("UPDATE members SET source = ? WHERE source = ?", b"b\0.txt", b"b.txt"))


def no_members(index):
    edit(index, ("DELETE FROM members",))


def text_size(index):
    recreate_members_without_types(index)
    edit(index, ("UPDATE members SET size = 'three' WHERE source = ?", b"b.txt"))


def text_header_size(index):
    recreate_members_without_types(index)
    edit(index, ("UPDATE members SET header_size = 'x' WHERE source = ?", b"b.txt"))


def text_total_size(index):
    edit(index, ("UPDATE tapes SET total_size = total_size || ' bytes'",))


def text_member_count(index):
    edit(index, ("UPDATE meta SET value = CAST(value AS TEXT) WHERE key = 'member_count'",))


def missing_column(index):
    edit(index, ("ALTER TABLE members DROP COLUMN mode",))


def exclude_not_json(index):
    edit(index, ("UPDATE meta SET value = '[unclosed' WHERE key = 'exclude'",))


DAMAGES = [kind_7, nul_in_a_name, no_members, text_size, text_header_size, text_total_size,
           text_member_count, missing_column, exclude_not_json]


@pytest.mark.index
@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
@pytest.mark.usefixtures("hot_path")  # the commands inherit the path of the read loop
def test_a_damaged_index_is_one_line_from_every_command_never_a_traceback(recorded, damage):
    src, index = recorded
    damage(index)
    results = {command[0]: bounded([*TARTAPE, *command[:1], src, *command[1:], "--index", index])
               for command in (("info",), ("ls",), ("verify",), ("stream",), ("locate", "data/b.txt"))}
    for command, done in results.items():
        assert "Traceback" not in done.stderr, (command, done.stderr)
        if done.returncode != 0:
            assert len(done.stderr.strip().splitlines()) == 1, (command, done.stderr)
    line = one_line(results["stream"])  # stream reads every row: it always fails
    assert str(index) in line and "damaged" in line, line


@NEEDS_MOUNT
@pytest.mark.parametrize("damage", [text_total_size, no_members, kind_7], ids=lambda f: f.__name__)
@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path of the read loop
def test_mount_of_a_damaged_index_is_one_line_or_eio_never_a_traceback(recorded, mounts, damage):
    src, index = recorded
    damage(index)
    mount, done = mounts.attempt(src, None, "--index", str(index))
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        assert "damaged" in one_line(done)
        return
    code = "import os, sys\ntry:\n    open(sys.argv[1], 'rb').read()\nexcept OSError as err:\n    print(err.errno)\n"
    done = bounded([sys.executable, "-c", code, mount.file], on_hang=lambda: [os.kill(p, 9) for p in mount.pids])
    assert done.stdout.split() == [str(errno.EIO)], done
    assert "Traceback" not in mount.log_text(), mount.log_text()


# --- finding 9: a member whose size disagrees with its kind ------------------------------------


@pytest.mark.index
@pytest.mark.parametrize("to_file", [True, False], ids=["stream_to_file", "stream_to_stdout"])
@pytest.mark.usefixtures("hot_path")  # the commands inherit the path of the read loop
def test_a_directory_with_a_size_is_a_damaged_index_and_stream_never_exits_0_short(recorded, to_file):
    """The root folder's row given a size, every later offset shifted to match: the offsets add
    up, only the kind says the size cannot be."""
    src, index = recorded
    with sqlite3.connect(index) as db:
        (root, header_size) = db.execute("SELECT offset, header_size FROM members WHERE kind = 5 "
                                         "ORDER BY offset LIMIT 1").fetchone()
    db.close()
    edit(index, ("UPDATE members SET size = 1024 WHERE offset = ?", root))
    shift_after(index, root, 1024)
    out = src.parent / "out.tar"
    argv = [*TARTAPE, "stream", src, "--index", index, *(["-o", out] if to_file else [])]
    done = bounded(argv)
    line = one_line(done)
    assert str(index) in line and "damaged" in line, line
    assert not out.exists()
