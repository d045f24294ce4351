"""The event stream's compiled batch (csrc/play.c, csrc/md5.c) against the pure-Python one.

On random trees, from random byte offsets and with random chunk sizes, TapePlayer gives the
same events on both paths (type, member, bytes, metadata with the MD5s), and the same error
after the same events when a source changed; the MD5s are checked against hashlib over the
bodies as tarfile reads them, and the bytes against the whole archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tartapefs import MemoryTape, PlanOptions, Recording, Tape, TapePlayer, TapeRecorder, TartapeError, native
from tartapefs import reader as reader_module
from tartapefs import stream as stream_module
from tartapefs.errors import IndexCorruptError
from test_native_read import FORGERIES, build, path, tree_specs
from test_hostile_index import text_header_size, text_size
from trees import archive_of, build_small_tree, content, record

try:
    from tartapefs import _native
except ImportError:
    _native = None

pytestmark = [pytest.mark.index, pytest.mark.skipif(native.module is None, reason=native.ACTIVE)]


def events_of(tape, start: int = 0, chunk_size: int = 1 << 20) -> list:
    """Every event from ``start``, then the error that stopped the stream as (type, message)."""
    out: list = []
    try:
        for ev in TapePlayer(tape).play(start_offset=start, chunk_size=chunk_size):
            out.append(ev)
    except (TartapeError, OSError) as err:
        out.append((type(err), str(err)))
    return out


def both(tape, start: int = 0, chunk_size: int = 1 << 20) -> tuple[list, list]:
    runs = []
    for compiled in (False, True):
        with path(compiled):
            runs.append(events_of(tape, start, chunk_size))
    return runs[0], runs[1]


def bodies_by_tarfile(archive: bytes) -> dict[str, str]:
    """Member name -> hex MD5 of its body, as Python's tarfile reads the archive."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar:
            body = tar.extractfile(info).read() if info.isreg() else b""
            out[info.name] = hashlib.md5(body).hexdigest()
    return out


# --- the MD5s ------------------------------------------------------------------------------


def test_md5s_of_every_length_around_the_block_edges_match_hashlib():
    rnd = random.Random(7)
    lengths = list(range(0, 200)) + [447, 448, 455, 456, 511, 512, 513, 4096, 65536 + 55, 1 << 20]
    lengths += [rnd.randrange(0, 10_000) for _ in range(300)]
    messages = [rnd.randbytes(n) for n in lengths]
    assert _native.md5s(messages) == [hashlib.md5(m).hexdigest() for m in messages]
    assert _native.md5s([]) == []
    assert _native.md5s([b"abc"]) == ["900150983cd24fb0d6963f7d28e17f72"]  # RFC 1321, A.5


def test_md5s_refuses_what_is_not_a_list_of_bytes():
    with pytest.raises(TypeError):
        _native.md5s([b"a", "b"])
    with pytest.raises(TypeError):
        _native.md5s((b"a",))


# --- the batch itself ------------------------------------------------------------------------


def test_play_block_makes_no_events_for_a_member_that_does_not_start_where_asked(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 700)
    with record(src, index_path=str(tmp_path / "i.db")) as tape, tape.reader() as reader:
        block = reader.read(0, 1 << 20)
        members = reader.served
        footer = tape.total_size - 1024
        args = (block, 0, members, 0, 0, footer, 1 << 20, stream_module._KINDS)
        events, pos, i = _native.play_block(*args)
        assert [e.type for e in events] == ["file_start", "file_data", "file_end"] * len(members)
        assert pos == members[-1].end and i == len(members)
        assert _native.play_block(block, 0, members, 0, 1, footer, 1 << 20, stream_module._KINDS) == ([], 1, 0)
        # a chunk shorter than the first member, or a block that stops inside it: none either
        assert _native.play_block(block, 0, members, 0, 0, footer, 511, stream_module._KINDS)[0] == []
        assert _native.play_block(block[:100], 0, members, 0, 0, footer, 1 << 20, stream_module._KINDS)[0] == []
        with pytest.raises(TypeError):
            _native.play_block(block, 0, tuple(members), 0, 0, footer, 1 << 20, stream_module._KINDS)
        with pytest.raises(ValueError):
            _native.play_block(block, -1, members, 0, 0, footer, 1 << 20, stream_module._KINDS)


# --- random trees ----------------------------------------------------------------------------

CHUNKS = st.sampled_from([512, 1000, 4096, 10_240, 1 << 16, 1 << 20]) | st.integers(1, 80_000)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=tree_specs(), prefix=st.sampled_from([None, "", "p" * 90]), data=st.data())
def test_random_trees_stream_the_same_events_on_both_paths(spec, prefix, data):
    with tempfile.TemporaryDirectory() as top:
        root = Path(top) / "src"
        build(root, spec)
        with record(root, prefix=prefix, index_path=os.path.join(top, "index.db")) as tape:
            full = archive_of(tape)
            md5s = bodies_by_tarfile(full)
            starts = [0] + data.draw(st.lists(st.integers(0, tape.total_size), max_size=3), label="starts")
            for start in starts:
                chunk = data.draw(CHUNKS, label="chunk size")
                pure, compiled = both(tape, start, chunk)
                assert compiled == pure
                assert b"".join(e.data for e in compiled if e.type == "file_data") == full[start:]
                for e in compiled:
                    if e.type == "file_end" and not e.metadata.resumed:
                        assert e.metadata.md5sum == md5s[e.entry.arc_path.rstrip("/")]


def test_many_small_files_stream_the_same_on_both_paths_in_blocks_of_every_size(tmp_path):
    """Hundreds of members per block (the batch's common case), blocks cutting members at
    every place, an index member at the end of the tape (served by Python)."""
    rnd = random.Random(3)
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(120):
            rel = f"d{d}/f{f}".encode()
            (src / rel.decode()).write_bytes(content(rel, rnd.choice([0, 1, 511, 512, 513]) + rnd.randrange(9000)))
    index_path = str(tmp_path / "i.db")
    TapeRecorder(str(src), index_path=index_path, plan=PlanOptions(index_member=True)).commit()
    with Tape.open(index_path) as tape:
        full = archive_of(tape)
        for chunk in (512, 8192, 100_000, 1 << 20):
            for start in (0, 1, 511, rnd.randrange(tape.total_size), tape.total_size - 1024, tape.total_size):
                pure, compiled = both(tape, start, chunk)
                assert compiled == pure
                assert b"".join(e.data for e in compiled if e.type == "file_data") == full[start:]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=tree_specs(), data=st.data())
def test_shards_of_random_trees_stream_the_same_on_both_paths(spec, data):
    with tempfile.TemporaryDirectory() as top:
        root = Path(top) / "src"
        build(root, spec)
        index_path = os.path.join(top, "index.db")
        TapeRecorder(str(root), index_path=index_path, plan=PlanOptions(shard_size=16 << 10)).commit()
        with Recording.open(index_path) as recording:
            for tape in recording.tapes():
                start = data.draw(st.integers(0, tape.total_size), label="start")
                pure, compiled = both(tape, start, data.draw(CHUNKS, label="chunk size"))
                assert compiled == pure


def test_a_memory_tape_streams_the_same_on_both_paths():
    tape = MemoryTape()
    rnd = random.Random(5)
    for i in range(300):
        tape.add_bytes(f"f{i}", rnd.randbytes(rnd.randrange(3000)))
    pure, compiled = both(tape)
    assert compiled == pure
    assert [e.metadata.md5sum for e in compiled if e.type == "file_end"] == [
        hashlib.md5(e.data[512 : 512 + e.entry.size]).hexdigest() for e in compiled if e.type == "file_data" and e.entry is not None]


# --- sources changed underneath --------------------------------------------------------------


@pytest.mark.parametrize("change", ["content", "deleted", "mode"])
def test_a_changed_source_stops_both_paths_after_the_same_events_with_the_same_error(tmp_path, change):
    src = tmp_path / "src"
    src.mkdir()
    names = [f"f{i:03}" for i in range(200)]
    for i, name in enumerate(names):
        (src / name).write_bytes(content(name.encode(), 100 + 37 * i))
    with record(src, index_path=str(tmp_path / "i.db")) as tape:
        victim = src / names[150]
        if change == "content":
            victim.write_bytes(b"other")
        elif change == "deleted":
            victim.unlink()
        else:
            victim.chmod(0o600)
        # 64 KiB blocks: the error is met in a block read ahead (in a thread), raised when reached
        for start, chunk in ((0, 1 << 20), (0, 4096), (0, 1 << 16), (tape.locate("src/" + names[100]).offset, 1 << 20)):
            pure, compiled = both(tape, start, chunk)
            assert compiled == pure
            assert isinstance(compiled[-1], tuple) and names[150] in compiled[-1][1]


# --- members made in C (reader.served) -------------------------------------------------------

MEMBER_TYPES = reader_module._MEMBER_TYPES


def reference(index, rows: list, base: int, after: int):
    """What reader.served makes of ``rows`` on the pure path, or the error it raises."""
    try:
        return [m for m in index.members(rows, base) if m.end > after]
    except TartapeError as err:
        return type(err), str(err)


def test_members_of_the_hard_tree_are_the_reference_ones(hard_tape):
    """PAX names, links, owners, non-UTF-8 names: C makes the rows it takes exactly as the
    index does, and leaves the rest (None) to it."""
    index = hard_tape.recording._index
    rows = index.rows_between(0, hard_tape.total_size - 1024, hard_tape.start)
    for lo in range(0, len(rows), 3):
        part = rows[lo : lo + 5]
        made = _native.members(part, hard_tape.start, hard_tape.prefix, 0, MEMBER_TYPES)
        assert made is None or made == reference(index, part, hard_tape.start, 0)
    plain = [r for r in rows if r[2] in (0, 5)]  # files and folders: always made in C
    assert _native.members(plain, hard_tape.start, hard_tape.prefix, 0, MEMBER_TYPES) == reference(
        index, plain, hard_tape.start, 0)


JUNK = st.sampled_from([None, -1, 0, 1, 1 << 63, -(1 << 63), 1 << 70, 2.5, "x", b"", b"a", b"..", b"/a", b"a\0b",
                        b"a/../b", b"a..b", 100, 5, 2, 1, True])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(column=st.integers(0, 15), value=JUNK, base=st.sampled_from([0, 512]), after=st.integers(-1, 3000),
       prefix=st.sampled_from([b"", b"p", b"p" * 90]))
def test_members_of_damaged_rows_are_the_reference_ones_or_left_to_it(tmp_path_factory, column, value, base, after,
                                                                       prefix):
    """A row with any column replaced by junk: C makes the reference's members, or gives
    None and the reference decides (its error, or members it checked further)."""
    src = tmp_path_factory.mktemp("junk") / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 600)
    index_path = str(src.parent / "i.db")
    with record(src, index_path=index_path) as tape:
        index = tape.recording._index
        rows = [list(r) for r in index.rows_between(0, tape.total_size - 1024)]
        rows[1][column] = value
        rows = [tuple(r) for r in rows]
        made = _native.members(rows, base, prefix, after, MEMBER_TYPES)
        saved, index.prefix = index.prefix, prefix
        try:
            want = reference(index, rows, base, after)
        finally:
            index.prefix = saved
        assert made is None or made == want


def test_members_refuses_what_is_not_a_list_of_rows():
    with pytest.raises(TypeError):
        _native.members((), 0, b"", 0, MEMBER_TYPES)
    assert _native.members([("not a row",)], 0, b"", 0, MEMBER_TYPES) is None


def test_rows_fetched_in_c_are_the_rows_python_s_sqlite3_gives(hard_tape):
    index, start = hard_tape.recording._index, hard_tape.start
    stop = hard_tape.total_size - 1024
    edges = sorted({m.offset for m in hard_tape.members()} | {m.body_offset for m in hard_tape.members()})
    for offset in edges + [1, 511, 513, stop - 1]:
        for n in (1, 512, 4096, 1 << 20):
            end = min(offset + n, stop)
            assert index.native_rows.fetch(start, offset, end) == index.rows_between(offset, end, start)


@pytest.mark.parametrize("forge", FORGERIES, ids=lambda f: f.__name__)
def test_a_forged_index_stops_both_streams_after_the_same_events(tmp_path, forge):
    """The forgeries of test_hostile_index.py: a text column is left to Python's sqlite3
    (fetch gives None), an odd row to the index's checks; the same error. As for reads
    (test_native_read.py), the pure path's window of rows may meet the damage a block
    earlier: its events are then the first of the compiled path's."""
    src = build_small_tree(tmp_path)
    index = tmp_path / "index.db"
    record(src, index_path=str(index)).close()
    forge(index)
    with Tape.open(str(index)) as tape:
        for start, chunk in ((0, 1 << 20), (0, 700), (513, 1 << 20)):
            pure, compiled = both(tape, start, chunk)
            assert compiled[-1] == pure[-1] and compiled[-1][0] is IndexCorruptError
            assert compiled[: len(pure) - 1] == pure[:-1]
        if forge in (text_size, text_header_size):
            assert tape.index.native_rows.fetch(tape.start, 0, tape.total_size - 1024) is None


# --- reading ahead ---------------------------------------------------------------------------


def test_a_stream_read_ahead_and_abandoned_leaves_no_thread_and_no_descriptor(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(400):
        (src / f"f{i:03}").write_bytes(content(b"%d" % i, 1000 + 31 * i))
    with record(src, index_path=str(tmp_path / "i.db")) as tape:
        before = len(os.listdir("/proc/self/fd"))
        events = TapePlayer(tape).play(chunk_size=1 << 16)
        for _, event in zip(range(500), events):
            pass
        assert event.type != "tape_completed"
        assert any(t.name.startswith("tartapefs-read-ahead") for t in threading.enumerate())
        events.close()
        assert not any(t.name.startswith("tartapefs-read-ahead") for t in threading.enumerate())
        assert len(os.listdir("/proc/self/fd")) == before


def test_reading_ahead_gives_the_events_reading_in_turn_gives(tmp_path, monkeypatch):
    """Blocks that cut members, members longer than a block, starts inside members: where
    the read ahead guessed another block than the stream then needs, it is dropped."""
    rnd = random.Random(11)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02}").write_bytes(content(b"%d" % i, rnd.choice([10, 5000, 70_000, 200_000])))
    with record(src, index_path=str(tmp_path / "i.db")) as tape:
        starts = [0, 700, rnd.randrange(tape.total_size), tape.total_size - 1024]
        for chunk in (1 << 16, 100_000):
            ahead = [events_of(tape, start, chunk) for start in starts]
            monkeypatch.setattr(stream_module, "_AHEAD_FROM", 1 << 62)
            in_turn = [events_of(tape, start, chunk) for start in starts]
            monkeypatch.undo()
            assert ahead == in_turn
