"""MemoryTape: archives of entries given in Python, checked by tarfile, GNU tar and bsdtar,
by ``read(o, n) == full[o:o+n]``, and by the player's events."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tartapefs import MemoryTape, SourceChangedError, StreamSizeError, TapePlayer, tarindex
from tartapefs.errors import UsageError

pytestmark = pytest.mark.index

MTIME = 1_700_000_000
LONG = "x" * 120 + "/" + "d" * 101  # needs a PAX header


def sample_tape(tmp_path, index_member: bool = True) -> tuple[MemoryTape, dict[str, bytes]]:
    """Bytes, a file on disk, a file-like stream, a chunk iterator, a folder; names that need
    a PAX header or CSV quoting."""
    disk = tmp_path / "on-disk.bin"
    disk.write_bytes(os.urandom(70_000))
    os.utime(disk, ns=(1_650_000_000_123_456_789,) * 2)
    expected = {
        "seg/0001.csv": b"a,b\n1,2\n",
        "seg/0002.csv": b"",
        LONG: os.urandom(513),
        'odd, "quoted"\nname': b"q" * 511,
        "x.bin": disk.read_bytes(),
        "stream.bin": bytes(range(256)) * 4000,
        "chunks.bin": b"abc" * 700,
    }
    tape = MemoryTape(index_member=index_member, mtime=MTIME)
    tape.add_dir("seg", mtime=MTIME - 10)
    tape.add_bytes("seg/0001.csv", expected["seg/0001.csv"], mode=0o640)
    tape.add_bytes("seg/0002.csv", b"")
    tape.add_bytes(LONG, expected[LONG], mtime=MTIME + 0.25)
    tape.add_bytes('odd, "quoted"\nname', expected['odd, "quoted"\nname'])
    tape.add_file(disk, arcname="x.bin")
    tape.add_stream("stream.bin", 1_024_000, lambda: io.BytesIO(expected["stream.bin"]))
    tape.add_stream("chunks.bin", 2100, lambda: (b"abc" for _ in range(700)))
    return tape, expected


def test_tarfile_reads_every_entry_and_the_index_member_agrees_with_its_offsets(tmp_path):
    tape, expected = sample_tape(tmp_path)
    size = tape.total_size  # known before the first byte
    full = tape.read(0, size)
    assert len(full) == size and size % 512 == 0 and full.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(full), encoding="utf-8", errors="surrogateescape") as tar:
        infos = tar.getmembers()
        for info in infos[:-1]:
            if info.isfile():
                assert tar.extractfile(info).read() == expected[info.name]
        index = infos[-1]
        assert index.name == "dataset.tarindex.csv" and index.mode == 0o644
        rows = list(tarindex.parse_rows(tar.extractfile(index).read()))
    assert [r.name.rstrip(b"/") for r in rows] == [os.fsencode(i.name) for i in infos[:-1]]
    assert [(r.header_offset, r.body_offset, r.size) for r in rows] == [(i.offset, i.offset_data, i.size)
                                                                       for i in infos[:-1]]
    assert infos[1].mode == 0o640 and infos[0].mtime == MTIME - 10
    assert infos[3].mtime == MTIME + 0.25  # a PAX header carries the fraction
    assert infos[5].mtime == 1_650_000_000  # a file on disk keeps its own mtime


@pytest.mark.parametrize("tool", [["tar"], ["bsdtar"]])
def test_gnu_tar_and_bsdtar_list_and_extract_the_index_member(tmp_path, tool):
    tape, expected = sample_tape(tmp_path)
    archive = tmp_path / "m.tar"
    with open(archive, "wb") as out:
        tape.copy_to(out)
    listing = subprocess.run([*tool, "-tf", archive], capture_output=True, check=True).stdout.splitlines()
    assert listing[-1] == b"dataset.tarindex.csv" and len(listing) == tape.member_count
    dest = tmp_path / "out"
    dest.mkdir()
    subprocess.run([*tool, "-xf", archive, "-C", dest], check=True, capture_output=True)
    for name, data in expected.items():
        assert (dest / name).read_bytes() == data, name
    content = (dest / "dataset.tarindex.csv").read_bytes()
    assert content == tarindex.index_csv(list(tape.members())[:-1])


@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_range_is_the_same_bytes_as_the_whole_archive(tmp_path_factory, data):
    tape = MemoryTape(index_member=data.draw(st.booleans()), mtime=MTIME)
    contents = data.draw(st.lists(st.binary(max_size=1500), max_size=6))
    for i, body in enumerate(contents):
        if data.draw(st.booleans()):
            tape.add_bytes(f"b/{i}", body)
        else:
            tape.add_stream(f"s/{i}", len(body), lambda body=body: [body[:7], body[7:]])
    full = tape.read(0, tape.total_size)
    for _ in range(10):
        offset = data.draw(st.integers(0, tape.total_size + 10))
        size = data.draw(st.integers(0, tape.total_size + 10))
        assert tape.read(offset, size) == full[offset : offset + size]


def test_play_gives_the_archive_with_md5s_from_any_offset(tmp_path):
    tape, expected = sample_tape(tmp_path)
    full = tape.read(0, tape.total_size)
    events = list(tape.play(chunk_size=4096))
    assert b"".join(e.data for e in events if e.type == "file_data") == full
    md5 = {e.entry.arc_path: e.metadata.md5sum for e in events if e.type == "file_end"}
    for name, data in expected.items():
        assert md5[name] == hashlib.md5(data).hexdigest()
    assert events[-1].type == "tape_completed"
    for start in (1, 700, len(full) // 2, len(full) - 1024, len(full)):
        played = TapePlayer(tape).play(start_offset=start, chunk_size=10_000)
        assert b"".join(e.data for e in played if e.type == "file_data") == full[start:]


@pytest.mark.parametrize("given_bytes,word", [(b"x" * 99, "ended after 99"), (b"x" * 101, "gave more than the 100")])
@pytest.mark.parametrize("as_file", [True, False])
def test_a_stream_of_the_wrong_length_raises_naming_the_entry(given_bytes, word, as_file):
    tape = MemoryTape(mtime=MTIME)
    tape.add_bytes("before", b"ok")
    opener = (lambda: io.BytesIO(given_bytes)) if as_file else (lambda: iter([given_bytes]))
    member = tape.add_stream("wrong.bin", 100, opener)
    with pytest.raises(StreamSizeError, match=f"wrong.bin: stream {word}") as err:
        tape.read(0, tape.total_size)
    assert err.value.member == "wrong.bin" and isinstance(err.value, SourceChangedError)
    assert tape.read(0, member.offset) == tape.read(0, member.offset)  # members before it still read
    with pytest.raises(StreamSizeError):
        list(tape.play())


def test_a_file_changed_after_it_was_added_is_never_served(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"1" * 1000)
    tape = MemoryTape(mtime=MTIME)
    member = tape.add_file(path, arcname="f.bin")
    assert tape.read(member.body_offset, 1000) == b"1" * 1000
    path.write_bytes(b"2" * 1001)
    with pytest.raises(SourceChangedError, match=r"f.bin: source changed since recording: size 1000 -> 1001"):
        tape.read(member.offset, 10)
    path.unlink()
    with pytest.raises(SourceChangedError, match="deleted"):
        tape.read(member.body_offset, 1)


def test_bad_entries_are_refused_with_one_line(tmp_path):
    (tmp_path / "link").symlink_to("/etc/hostname")
    tape = MemoryTape(index_member=True)
    for name in ["/abs", "../up", "a/../b", "a//b", "", "./a"]:
        with pytest.raises(UsageError, match="relative"):
            tape.add_bytes(name, b"")
    with pytest.raises(UsageError, match="not a regular file"):
        tape.add_file(tmp_path / "link")
    tape.add_bytes("a", b"")
    with pytest.raises(UsageError, match="added twice"):
        tape.add_bytes("a", b"x")
    with pytest.raises(UsageError, match="mode"):
        tape.add_bytes("m", b"", mode=0o10000)
    tape.add_bytes("dataset.tarindex.csv", b"")
    with pytest.raises(UsageError, match="index member's name"):
        tape.total_size
    other = MemoryTape()
    other.add_bytes("a", b"")
    other.read(0, 1)
    with pytest.raises(UsageError, match="before the first read"):
        other.add_bytes("b", b"")


def test_an_empty_tape_is_the_footer_and_the_total_size_counts_the_index():
    assert MemoryTape().read(0, 5000) == bytes(1024)
    tape = MemoryTape(index_member=True, mtime=0)
    tape.add_bytes("a", b"x")
    assert tape.total_size == 1024 + 512 + 512 + 1024  # a, the index member, the footer


def test_the_csv_agrees_with_tarfile_for_every_member_of_the_hard_tree(hard_tape, hard_archive):
    """PAX headers, long and undecodable names, hard links, mtimes before 1970 and past 2242."""
    rows = list(tarindex.parse_rows(tarindex.index_csv(hard_tape.members())))
    infos = tarfile.open(fileobj=io.BytesIO(hard_archive), encoding="utf-8", errors="surrogateescape").getmembers()
    assert len(rows) == len(infos) == hard_tape.member_count
    for row, info in zip(rows, infos):
        assert row.name.rstrip(b"/") == os.fsencode(info.name)
        assert (row.header_offset, row.body_offset) == (info.offset, info.offset_data)
        assert row.size == info.size
        assert float(row.mtime) == info.mtime
        kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}.get(info.type, "file")
        assert row.kind == kind
