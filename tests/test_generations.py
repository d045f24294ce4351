"""A recording is one generation: recording the folder again (``Recording.record_again``)
gives a new one with the same options, while the old one keeps serving its own bytes. A tape
whose bytes changed always gets a later mtime, so that tools comparing size and mtime (rsync,
rclone, HTTP caches) see a new file."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile

import pytest

from tartapefs import PlanOptions, Recording, TapeRecorder
from tartapefs.record import RecordOptions
from tartapefs.tape import Sidecar
from trees import archive_of, build_small_tree

pytestmark = pytest.mark.index


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


def test_recording_again_is_a_new_generation_and_the_old_one_serves_its_own_bytes(tmp_path):
    src = build_small_tree(tmp_path)
    TapeRecorder(src).commit()
    with Recording.discover(str(src)) as first:
        [tape] = first.tapes()
        before = archive_of(tape)
        (src / "0-new.txt").write_bytes(b"n" * 700)
        with first.record_again() as second:
            [new] = second.tapes()
            assert second.fingerprint != first.fingerprint and new.total_size != tape.total_size
            assert archive_of(tape) == before  # the index file was renamed over: still read
            after = archive_of(new)
            assert "data/0-new.txt" in names(after) and "data/0-new.txt" not in names(before)
            assert new.mtime >= tape.mtime and second.recorded_at >= first.recorded_at
    with Recording.discover(str(src)) as third:
        assert archive_of(third.tapes()[0]) == after


def test_an_unchanged_folder_recorded_again_keeps_fingerprint_and_mtime(tmp_path):
    src = build_small_tree(tmp_path)
    TapeRecorder(src).commit()
    with Recording.discover(str(src)) as first, first.record_again() as second:
        assert second.fingerprint == first.fingerprint
        assert [(t.name, t.mtime) for t in second.tapes()] == [(t.name, t.mtime) for t in first.tapes()]


def test_bytes_changed_without_a_newer_member_still_give_a_later_mtime(tmp_path):
    src = build_small_tree(tmp_path)
    TapeRecorder(src).commit()
    with Recording.discover(str(src)) as first:
        os.chmod(src / "sub" / "c.txt", 0o600)  # a mode: same size, no mtime moves
        with first.record_again() as second, second.record_again() as third:
            [a], [b], [c] = first.tapes(), second.tapes(), third.tapes()
            assert b.fingerprint != a.fingerprint and b.total_size == a.total_size
            assert b.mtime == a.mtime + 1  # rsync would otherwise see the same size and mtime
            assert (c.fingerprint, c.mtime) == (b.fingerprint, b.mtime)  # and it stays so


def test_record_again_keeps_the_options_the_recording_was_made_with(tmp_path):
    src = build_small_tree(tmp_path)
    index = tmp_path / "elsewhere.db"
    options = dict(exclude=["*.txt"], anonymize=False, index_path=str(index), prefix="top",
                   plan=PlanOptions(shard_members=3))
    TapeRecorder(src, **options).commit()
    with Recording.open(str(index)) as first:
        (src / "new.bin").write_bytes(b"x" * 10)
        (src / "new.txt").write_bytes(b"x" * 10)
        with first.record_again() as second:
            assert second.options == first.options
            assert second.options == RecordOptions(str(src), str(index), ("*.txt",), True, b"top",
                                                   PlanOptions(shard_members=3))
            members = [m.source for m in second.members()]
            assert b"new.bin" in members and b"new.txt" not in members
            assert len(second.tapes()) > 1 and all(t.name.startswith("data-") for t in second.tapes())
    assert not (src / ".tartape").exists()


def test_record_options_carry_any_bytes_of_a_path_or_prefix(tmp_path):
    options = RecordOptions(os.fsdecode(b"/srv/\xff\xfe data"), "/i/index.db", ("*.o",), False, b"p\xffq",
                            PlanOptions(shard_size=1 << 20))
    assert RecordOptions.from_json(options.to_json()) == options


def test_a_sidecar_has_the_fingerprint_of_its_bytes():
    assert Sidecar("a.json", b"{}", 5).fingerprint == Sidecar("b.json", b"{}", 9).fingerprint
    assert Sidecar("a.json", b"{}", 5).fingerprint != Sidecar("a.json", b"[]", 5).fingerprint


def test_ratarmounts_index_follows_its_archive_from_one_generation_to_the_next(tmp_path):
    """Served beside its archive, it keeps its fingerprint while the archive does, and
    carries the archive's new mtime when the archive changed (even with no newer member)."""
    from tartapefs.ratarindex import SUFFIX
    from tartapefs.tape import GeneratedSidecar, archives

    def sidecar(recording: Recording) -> GeneratedSidecar:
        [item] = [a for a in archives([recording]) if a.name.endswith(SUFFIX)]
        return item

    def archive_mtime(item: GeneratedSidecar) -> float:
        path = tmp_path / "ratarmount.sqlite"
        path.write_bytes(item.reader().read(0, item.total_size))
        db = sqlite3.connect(path)
        try:
            [(stats,)] = db.execute("SELECT value FROM metadata WHERE key = 'tarstats'").fetchall()
        finally:
            db.close()
        return json.loads(stats)["st_mtime"]

    src = build_small_tree(tmp_path)
    TapeRecorder(src, plan=PlanOptions(ratarmount_index=True)).commit()
    with Recording.discover(str(src)) as first, first.record_again() as second:
        a, b = sidecar(first), sidecar(second)
        assert (b.fingerprint, b.mtime) == (a.fingerprint, a.mtime)
        assert b.reader().read(0, b.total_size) == a.reader().read(0, a.total_size)
        os.chmod(src / "sub" / "c.txt", 0o600)  # new bytes, no newer member: mtime + 1
        with second.record_again() as third:
            c = sidecar(third)
            assert c.fingerprint != b.fingerprint and c.mtime == b.mtime + 1 == third.tapes()[0].mtime
            assert archive_mtime(c) == c.mtime and archive_mtime(b) == b.mtime


def test_an_encrypted_recording_recorded_again_has_new_keys_and_so_a_later_mtime(tmp_path):
    pytest.importorskip("cryptography")
    from agekit import keygen
    from tartapefs.age import parse_recipient

    src = build_small_tree(tmp_path)
    recipient = parse_recipient(keygen(tmp_path).public)
    TapeRecorder(src, recipients=[recipient]).commit()
    with Recording.discover(str(src)) as first, first.record_again() as second:
        [a], [b] = first.tapes(), second.tapes()
        assert second.options == first.options and second.recipients == (recipient,)
        assert b.fingerprint == a.fingerprint  # the same plain tar...
        assert b.encryption.file_key != a.encryption.file_key  # ...under a new key: other bytes
        assert b.encrypted().fingerprint != a.encrypted().fingerprint and b.mtime == a.mtime + 1
