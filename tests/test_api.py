"""The Python API on real trees: Tape and locate against the bytes, recording
options, determinism and the fingerprint, and the TapePlayer event stream."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

from tartapefs import Tape, TapePlayer, TapeRecorder
from tartapefs.errors import (IndexCorruptError, IndexMissingError, IndexVersionError,
                              MemberNotFoundError, UsageError)
from tartapefs.tape import open_or_record
from trees import (PRE_1970, archive_of, build_deep_tree, build_hard_tree, expected_names, record,
                   snapshot)

# Every test here runs on both paths of the per-member loops (pure Python and C).
pytestmark = [pytest.mark.index, pytest.mark.usefixtures("hot_path")]

EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def archive_names(data: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [os.fsencode(m.name) + (b"/" if m.isdir() else b"") for m in tf.getmembers()]


# --- Tape, members and locate ------------------------------------------------------------


def test_member_offsets_agree_with_tarfile_and_the_sizes_add_up(hard_tape, hard_archive):
    members = list(hard_tape.members())
    with tarfile.open(fileobj=io.BytesIO(hard_archive)) as tf:
        infos = tf.getmembers()
    assert hard_tape.member_count == len(members) == len(infos)
    assert hard_tape.total_size == len(hard_archive) == members[-1].end + 1024
    for m, info in zip(members, infos):
        assert (m.offset, m.body_offset) == (info.offset, info.offset_data), m.arc_path
        assert m.name == os.fsencode(info.name) + (b"/" if info.isdir() else b"")
        assert m.end == m.body_end + (-m.size % 512) and m.body_end == m.body_offset + m.size
    assert all(a.end == b.offset for a, b in zip(members, members[1:]))


def test_locate_body_range_holds_the_file_content(hard_tree, hard_tape, hard_archive):
    assert hard_tree.files
    for rel, data in hard_tree.files.items():
        m = hard_tape.locate(hard_tree.name + b"/" + rel)
        assert m.kind in ("file", "hardlink") and m.size in (len(data), 0)
        if m.kind == "file":
            assert hard_archive[m.body_offset:m.body_end] == data, rel
    assert hard_tape.locate(os.fsdecode(b"data/names/\xff\xfe")) == hard_tape.locate(b"data/names/\xff\xfe")


def test_every_member_is_found_by_its_name_and_its_arc_path(hard_tape):
    for m in hard_tape.members():
        assert hard_tape.locate(m.name) == m
        assert hard_tape.locate(m.arc_path) == m, m.arc_path


def test_locate_an_unknown_member_raises_member_not_found(hard_tape):
    with pytest.raises(MemberNotFoundError):
        hard_tape.locate("data/no/such/file")


def test_a_member_beyond_path_max_from_the_root_is_recorded_and_read(tmp_path):
    parent = tmp_path / ("P" * 200) / ("Q" * 200)
    parent.mkdir(parents=True)
    root, leaf, data = build_deep_tree(parent, below=3800)
    assert len(os.fsencode(root)) + len(leaf) > 4096
    archive = archive_of(record(root, index_path=str(tmp_path / "i.db")))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        assert tf.extractfile("data/" + os.fsdecode(leaf)).read() == data


def test_discover_an_unrecorded_folder_raises_index_missing(small_tree):
    with pytest.raises(IndexMissingError):
        Tape.discover(str(small_tree))


def test_opening_garbage_or_a_foreign_sqlite_file_raises_a_clear_index_error(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not an index at all\n" * 100)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table songs (title text)")
    db.close()
    for path in (garbage, foreign):
        with pytest.raises((IndexCorruptError, IndexVersionError)):
            Tape.open(str(path))


def test_tape_mtime_is_the_newest_member_mtime_clamped_at_zero(small_tree, tmp_path):
    tape = record(small_tree, index_path=str(tmp_path / "i.db"))
    assert tape.mtime == max(e.mtime for e in snapshot(small_tree).values())
    for e in snapshot(small_tree):
        os.utime(small_tree / os.fsdecode(e), (PRE_1970, PRE_1970), follow_symlinks=False)
    assert record(small_tree, index_path=str(tmp_path / "j.db")).mtime == 0


def test_open_or_record_records_once_then_reuses_the_index(small_tree):
    first = open_or_record(str(small_tree))
    inode = os.stat(first.index_path).st_ino
    again = open_or_record(str(small_tree))
    assert again.fingerprint == first.fingerprint and os.stat(again.index_path).st_ino == inode
    assert archive_of(again) == archive_of(first)


# --- recording options -------------------------------------------------------------------


@pytest.mark.parametrize("prefix,expected", [(None, b"data"), ("", b""), ("X", b"X"), ("a/b", b"a/b")])
def test_prefix_decides_how_member_names_start(small_tree, prefix, expected):
    names = archive_names(archive_of(record(small_tree, prefix=prefix)))
    assert set(names) == expected_names(small_tree, expected)
    assert (expected + b"/" in names) == bool(expected)


def test_owners_are_anonymized_unless_kept(small_tree, tmp_path):
    os.chown(small_tree / "b.txt", 1234, 5678)
    for anonymize, owner in ((True, (0, 0)), (False, (1234, 5678))):
        data = archive_of(record(small_tree, anonymize=anonymize, index_path=str(tmp_path / f"{anonymize}.db")))
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert (tf.getmember("data/b.txt").uid, tf.getmember("data/b.txt").gid) == owner


def test_a_fifo_is_left_out_with_a_warning_naming_it(small_tree, caplog):
    os.mkfifo(small_tree / "pipe")
    with caplog.at_level(logging.WARNING):
        data = archive_of(record(small_tree))
    assert b"data/pipe" not in archive_names(data)
    assert any("pipe" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_excluded_globs_leave_members_out(small_tree):
    names = archive_names(archive_of(record(small_tree, exclude=["c.txt"])))
    assert b"data/sub/c.txt" not in names and b"data/sub/d.txt" in names


# --- determinism and the fingerprint -----------------------------------------------------


def test_the_same_tree_at_another_path_gives_the_same_bytes_and_fingerprint(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = build_hard_tree(tmp_path / "one").root
    subprocess.run(["cp", "-a", one, tmp_path / "two"], check=True)
    a = record(one, index_path=str(tmp_path / "one.db"))
    b = record(tmp_path / "two" / "data", index_path=str(tmp_path / "two.db"))
    assert archive_of(a) == archive_of(b)
    assert a.fingerprint == b.fingerprint


def test_recording_in_place_twice_gives_identical_bytes_and_leaves_the_index_out(small_tree):
    a = record(small_tree)
    root_mtime = os.stat(small_tree).st_mtime_ns
    first = archive_of(a)
    b = record(small_tree)
    assert os.stat(small_tree).st_mtime_ns == root_mtime
    assert archive_of(b) == first and b.fingerprint == a.fingerprint
    assert not any(b".tartape" in n for n in archive_names(first))


def test_only_the_top_level_tartape_folder_is_left_out(small_tree):
    (small_tree / "sub" / ".tartape").mkdir()
    (small_tree / "sub" / ".tartape" / "keep").write_bytes(b"user data")
    names = archive_names(archive_of(record(small_tree)))
    assert b"data/sub/.tartape/keep" in names and b"data/.tartape/" not in names


def _keep_parent_mtime(path: Path, change) -> None:
    """Apply ``change`` and restore the parent's mtime, so only one field differs."""
    st = os.stat(path.parent)
    change(path)
    os.utime(path.parent, ns=(st.st_atime_ns, st.st_mtime_ns))


FIELD_CHANGES = {
    "content_size": ("a.txt", lambda p: p.write_bytes(p.read_bytes() + b"!")),
    "mode": ("a.txt", lambda p: p.chmod(0o600)),
    "mtime": ("a.txt", lambda p: os.utime(p, (1_000_000_000, 1_000_000_000))),
    "name": ("a.txt", lambda p: p.rename(p.with_name("a2.txt"))),
    "link_target": ("link", lambda p: (p.unlink(), p.symlink_to("b.txt"))),
    "new_file": ("sub/new", lambda p: p.write_bytes(b"")),
}


@pytest.mark.parametrize("field", FIELD_CHANGES)
def test_changing_a_bytes_deciding_field_changes_the_fingerprint(small_tree, tmp_path, field):
    def fingerprint(name: str) -> str:
        return TapeRecorder(str(small_tree), index_path=str(tmp_path / name)).commit()

    before = fingerprint("1.db")
    assert fingerprint("2.db") == before
    rel, change = FIELD_CHANGES[field]
    _keep_parent_mtime(small_tree / rel, change)
    assert fingerprint("3.db") != before


# --- TapePlayer --------------------------------------------------------------------------


def play(tape, start: int = 0, chunk_size: int = 1 << 20) -> list:
    return list(TapePlayer(tape).play(start_offset=start, chunk_size=chunk_size))


def test_events_come_per_member_in_order_and_the_data_is_the_archive(hard_tape, hard_archive):
    events = play(hard_tape, chunk_size=300)
    assert b"".join(e.data for e in events if e.type == "file_data") == hard_archive
    assert events[-1].type == "tape_completed" and [e.type for e in events].count("tape_completed") == 1
    members, current = [], None
    for e in events[:-1]:
        if e.type == "file_start":
            assert current is None
            current = e.entry
            members.append(current)
        elif e.type == "file_end":
            assert e.entry == current and e.metadata.end_offset == current.end
            content = hard_archive[current.body_offset:current.body_end]
            assert e.metadata.md5sum == hashlib.md5(content).hexdigest(), current.arc_path
            current = None
        else:
            assert e.type == "file_data"
    assert [m.name for m in members] == [m.name for m in hard_tape.members()]


def test_md5_of_directories_and_links_is_that_of_empty_content(hard_tape):
    ends = [e for e in play(hard_tape) if e.type == "file_end"]
    assert {e.entry.kind for e in ends} == {"file", "dir", "symlink", "hardlink"}
    assert {e.metadata.md5sum for e in ends if e.entry.kind != "file"} == {EMPTY_MD5}


def resume_points(tape) -> dict[str, int]:
    size_1 = tape.locate("data/sizes/size_1")
    big = tape.locate("data/hard/one")
    return {"member_start": big.offset, "in_header": big.offset + 100, "in_body": big.body_offset + 7,
            "in_padding": size_1.body_end + 3, "footer_start": tape.total_size - 1024,
            "in_footer": tape.total_size - 100, "end": tape.total_size}


@pytest.mark.parametrize("where", ["member_start", "in_header", "in_body", "in_padding",
                                   "footer_start", "in_footer", "end"])
def test_playing_from_an_offset_yields_the_archive_from_there(hard_tape, hard_archive, where):
    k = resume_points(hard_tape)[where]
    events = play(hard_tape, k, chunk_size=1000)
    assert b"".join(e.data for e in events if e.type == "file_data") == hard_archive[k:]
    assert events[-1].type == "tape_completed"
    starts = [e for e in events if e.type == "file_start"]
    ends = [e for e in events if e.type == "file_end"]
    if k >= hard_tape.total_size - 1024:
        assert starts == [] and ends == []
        return
    first = starts[0].entry
    assert first.offset <= k < first.end
    assert starts[0].metadata.resumed == (k > first.offset)
    assert (ends[0].metadata.md5sum is None) == (k > first.offset)
    assert all(not e.metadata.resumed for e in starts[1:])
    assert all(e.metadata.md5sum is not None for e in ends[1:])


def test_a_stream_abandoned_midway_closes_its_source_files(hard_tape):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    events = TapePlayer(hard_tape).play(chunk_size=512)
    for _, event in zip(range(200), events):
        pass
    assert event.type != "tape_completed" and open_fds() > before
    events.close()
    assert open_fds() == before


@pytest.mark.parametrize("start", [-1, "past_end"])
def test_playing_from_outside_the_tape_is_a_usage_error(hard_tape, start):
    start = hard_tape.total_size + 1 if start == "past_end" else start
    with pytest.raises(UsageError):
        next(iter(TapePlayer(hard_tape).play(start_offset=start)))


def test_every_error_class_the_package_help_names_is_exported():
    import builtins
    import pydoc
    import re

    import tartapefs

    named = set(re.findall(r"\b([A-Z]\w*Error)\b", pydoc.render_doc(tartapefs, renderer=pydoc.plaintext)))
    missing = sorted(n for n in named if not hasattr(tartapefs, n) and not hasattr(builtins, n))
    assert missing == []
    assert all(issubclass(getattr(tartapefs, n), tartapefs.TartapeError) for n in named
               if hasattr(tartapefs, n) and n != "TartapeError")
