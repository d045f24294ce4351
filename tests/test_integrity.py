"""A source that changes after recording: reads fail with a typed error naming the
member, never return other bytes, and every other member keeps reading fine."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutations import FILE, MUTATIONS, grow
from tartapefs import TapePlayer, TapeReader
from tartapefs.errors import SourceChangedError
from trees import archive_of, record

# Every test here runs on both paths of the per-member loops (pure Python and C).
pytestmark = [pytest.mark.index, pytest.mark.usefixtures("hot_path")]


@pytest.fixture
def recorded(small_tree: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tape = record(small_tree)
    return small_tree, outside, tape, archive_of(tape)


def read_or_error(reader: TapeReader, offset: int, size: int) -> bytes | SourceChangedError:
    try:
        return reader.read(offset, size)
    except SourceChangedError as err:
        return err


def ancestors(arc_path: str) -> tuple[str, ...]:
    """Directory members above a path: they may fail first, as their entries changed."""
    parts = arc_path.rstrip("/").split("/")[:-1]
    return tuple("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))


def assert_changed_member_fails(reader, tape, original, changed):
    for arc_path in changed:
        m = tape.locate(arc_path)
        if m.size == 0:
            continue  # no body: only reads of body bytes must fail
        for offset, size in ((m.body_offset, m.size), (m.body_offset, 1), (m.offset, m.end - m.offset),
                             (m.body_end - 1, 1), (0, tape.total_size)):
            got = read_or_error(reader, offset, size)
            assert isinstance(got, SourceChangedError), f"{arc_path}: read {offset}+{size} served bytes"
            assert got.member == arc_path


def assert_other_members_read_fine(reader, tape, original, changed):
    for m in tape.members():
        if m.arc_path in changed or m.arc_path.rstrip("/") + "/" in changed:
            continue
        got = read_or_error(reader, m.offset, m.end - m.offset)
        if m.kind == "dir" and isinstance(got, SourceChangedError):
            continue  # a directory whose entries changed may be reported; it has no body
        assert got == original[m.offset:m.end], m.arc_path


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("warm", [False, True], ids=["fresh_reader", "reader_that_read_everything"])
def test_reading_a_changed_member_raises_naming_it_and_others_still_read(recorded, mutate, warm):
    root, outside, tape, original = recorded
    with TapeReader(tape) as reader:
        if warm:
            assert reader.read(0, tape.total_size) == original
        changed = mutate(root, outside)
        assert_changed_member_fails(reader, tape, original, changed)
        assert_other_members_read_fine(reader, tape, original, changed)


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
def test_playing_a_changed_tape_raises_and_never_continues_past_the_member(recorded, mutate):
    root, outside, tape, original = recorded
    changed = mutate(root, outside)
    first_file = min((tape.locate(p) for p in changed if tape.locate(p).kind == "file"),
                     key=lambda m: m.offset)
    played, types = bytearray(), []
    with pytest.raises(SourceChangedError) as info:
        for event in TapePlayer(tape).play(chunk_size=512):
            types.append(event.type)
            if event.type == "file_data":
                played += event.data
    assert info.value.member in changed + ancestors(first_file.arc_path)
    assert "tape_completed" not in types
    assert len(played) <= first_file.body_end and bytes(played) == original[:len(played)]


def test_error_message_names_the_member_and_the_reason(recorded):
    root, outside, tape, _ = recorded
    grow(root, outside)
    with TapeReader(tape) as reader, pytest.raises(SourceChangedError) as info:
        reader.read(tape.locate(FILE).body_offset, 10)
    assert FILE in str(info.value) and info.value.reason
    assert "\n" not in str(info.value)


def test_a_new_file_in_the_source_does_not_change_the_recorded_bytes(recorded):
    root, outside, tape, original = recorded
    (root / "sub" / "new.txt").write_bytes(b"new")
    with TapeReader(tape) as reader:
        m = tape.locate("data/sub/c.txt")
        assert reader.read(m.offset, m.end - m.offset) == original[m.offset:m.end]
