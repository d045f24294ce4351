"""tartapefs.compat.v3 next to the real tartape 3.0.3 (a test dependency), on the same
folder: the same members, events, volumes, locate ranges and file-object behaviour,
each archive checked against its own bytes. The differences the README lists are
pinned here too, so that a change on either side shows."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile

import pytest
import tartape as real

import tartapefs.compat.v3 as ours
from trees import build_report_tree, tree_files

pytestmark = pytest.mark.index

SIZES = [512, 1024, 1536, "2KB", 4096, "8KB", "1MB"]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """tartape keeps a checksum cache in ~/.tartape: give it a home of its own."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def dataset(tmp_path):
    """The README dataset plus what tartape leaves out by default (.DS_Store, __pycache__)."""
    root = build_report_tree(tmp_path, "my_dataset")
    (root / "docs" / ".DS_Store").write_bytes(b"finder")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "m.pyc").write_bytes(b"bytecode")
    (root / "reports" / "big.csv").write_bytes(bytes(range(256)) * 40)  # 10240 bytes, several volumes
    os.utime(root, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return root


def record_both(root, **options):
    """The folder recorded by tartape and by tartapefs, into catalogs of the same name
    (volume names start with the catalog's) in two folders beside it."""
    tapes = []
    for lib, where in ((real, "real"), (ours, "ours")):
        (root.parent / where).mkdir(exist_ok=True)
        tapes.append(lib.record(root, catalog_path=root.parent / where / f"{root.name}.tartape", **options))
    return tapes


def whole(tape) -> bytes:
    return b"".join(tape.play())


class Recorder:
    """An observer that keeps what each event says."""

    def __init__(self) -> None:
        self.seen = []

    def on_file_start(self, e):
        self.seen.append(("start", e.entry.info.arc_path, e.metadata.start_offset, e.metadata.resumed))

    def on_file_end(self, e):
        self.seen.append(("end", e.entry.info.arc_path, e.metadata.end_offset, e.metadata.checksum,
                          e.metadata.is_complete))

    def on_tape_completed(self, e):
        self.seen.append(("completed", e.type))


# --- the same archive, described the same way ---------------------------------------------


def test_the_same_members_in_the_same_order_at_the_same_offsets(dataset):
    theirs, mine = record_both(dataset)
    listing = [(t.arc_path, t.rel_path, t.size, t.is_dir, t.is_symlink, t.linkname, t.start_offset, t.end_offset)
               for t in theirs.inspect()]
    assert listing == [(t.arc_path, t.rel_path, t.size, t.is_dir, t.is_symlink, t.linkname, t.start_offset,
                        t.end_offset) for t in mine.inspect()]
    assert "my_dataset/docs/.DS_Store" not in {row[0] for row in listing} and len(listing) == 10
    assert (theirs.total_size, theirs.file_count, theirs.data_size) == (mine.total_size, mine.file_count,
                                                                       mine.data_size)
    assert theirs.exclude_patterns == mine.exclude_patterns == ours.DEFAULT_EXCLUDES
    a, b = whole(theirs), whole(mine)
    with tarfile.open(fileobj=io.BytesIO(a)) as ta, tarfile.open(fileobj=io.BytesIO(b)) as tb:
        assert [(m.name, m.type, m.size, m.mtime, m.linkname) for m in ta] == \
               [(m.name, m.type, m.size, m.mtime, m.linkname) for m in tb]
        assert {m.name: ta.extractfile(m).read() for m in ta if m.isfile()} == regular_files_without_junk(dataset)
        assert {m.name: tb.extractfile(m).read() for m in tb if m.isfile()} == regular_files_without_junk(dataset)


def regular_files_without_junk(root) -> dict[str, bytes]:
    return {k: v for k, v in tree_files(root).items() if ".DS_Store" not in k and "__pycache__" not in k}


def resume_points(tape) -> list[int]:
    points = {0, tape.total_size - 1024, tape.total_size - 1}
    for t in tape.inspect():
        start = t.start_offset
        points |= {start, start + 1, start + 511, start + 512, start + 513, t.end_offset - 1}
    return sorted(p for p in points if 0 <= p < tape.total_size)


@pytest.mark.parametrize("checksum", [False, "md5", "sha256"])
def test_the_same_events_and_the_own_bytes_from_every_resume_point(dataset, checksum):
    theirs, mine = record_both(dataset, checksum=checksum)
    a, b = whole(theirs), whole(mine)
    assert resume_points(theirs) == resume_points(mine)
    ends = []
    for start in resume_points(theirs):
        seen_a, seen_b = Recorder(), Recorder()
        got_a = b"".join(theirs.play(start_offset=start, buffer_size=700, observer=seen_a))
        got_b = b"".join(mine.play(start_offset=start, buffer_size=700, observer=seen_b))
        assert (got_a, got_b) == (a[start:], b[start:]), start
        assert seen_a.seen == seen_b.seen, start
        ends += [e for e in seen_a.seen if e[0] == "end" and start == 0]
    files = regular_files_without_junk(dataset)
    assert len(ends) == 10 and all((e[3] is not None) == (bool(checksum) and e[1] in files) for e in ends)
    for e in ends:
        if e[3] is not None:
            assert e[3] == hashlib.new(checksum, files[e[1]]).hexdigest()


def test_the_same_volumes_each_a_slice_of_its_own_archive(dataset):
    theirs, mine = record_both(dataset)
    a, b = whole(theirs), whole(mine)
    for size in SIZES:
        vols_a, vols_b = list(theirs.iter_volumes(size=size)), list(mine.iter_volumes(size=size))

        def shape(v, fingerprint):
            return (v.index, v.size, v.start_offset, v.end_offset, v.total_volumes, v.layout_tag,
                    v.name.replace(fingerprint[:8], "*"), v.checksum_algorithm)

        assert [shape(v, theirs.fingerprint) for v in vols_a] == [shape(v, mine.fingerprint) for v in vols_b]
        for va, vb in zip(vols_a, vols_b):
            with va, vb:
                assert va.read() == a[va.start_offset:va.end_offset]
                assert vb.read() == b[vb.start_offset:vb.end_offset]
            assert va.checksum == hashlib.sha256(a[va.start_offset:va.end_offset]).hexdigest()
            assert vb.checksum == hashlib.sha256(b[vb.start_offset:vb.end_offset]).hexdigest()
        # One volume straight from a layout that was never iterated: tartape names it otherwise.
        one_a, one_b = theirs.get_volume(index=1, size=4608), mine.get_volume(index=1, size=4608)
        assert (one_a.name, one_a.size, one_a.layout_tag) == (one_b.name, one_b.size, one_b.layout_tag)


def test_locate_gives_the_same_ranges_and_each_finds_the_file_in_its_own_volumes(dataset):
    theirs, mine = record_both(dataset)
    a, b = whole(theirs), whole(mine)
    cat_a, cat_b = real.open_catalog(theirs), ours.open_catalog(mine, read_only=True)
    files = regular_files_without_junk(dataset)
    for size in [None] + SIZES:
        for name, data in files.items():
            where_a, where_b = cat_a.locate(name, tag_or_size=size), cat_b.locate(name, tag_or_size=size)
            assert gps(where_a) == gps(where_b), (name, size)
            step = ours.parse_size(size) if size else len(b)
            for archive in (a, b):
                got = bytearray(len(data))
                for f in where_b.fragments:
                    first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", f.range_header["Range"]).groups())
                    volume = archive[f.volume_index * step:(f.volume_index + 1) * step]
                    got[f.source_offset:f.source_offset + f.volume_length] = volume[first:last + 1]
                assert got == data, (name, size)
    assert gps(cat_a.locate("my_dataset/docs")) == gps(cat_b.locate("my_dataset/docs")) == ("my_dataset/docs", 0, [])


def gps(where) -> tuple:
    """A FileGPS (or a TrackGPS) as plain values, comparable across the two packages."""
    size = getattr(where, "file_size", None)
    return where.arc_path, size, [(f.to_dict(), f.http_range, f.range_header) for f in where.fragments]


def test_locate_ranges_point_into_each_archive_where_the_two_differ(tmp_path):
    root = build_report_tree(tmp_path, "my_dataset")
    os.link(root / "a.txt", root / "docs" / "hard.txt")  # tartape stores a copy, tartapefs a link
    theirs, mine = record_both(root)
    a, b = whole(theirs), whole(mine)
    name = "my_dataset/reports/annual_2024.pdf"
    where_a, where_b = theirs.locate(name, tag_or_size=1024), mine.locate(name, tag_or_size=1024)
    assert gps(where_a) != gps(where_b)  # the copy of a.txt moved everything after it in tartape's archive
    for archive, where in ((a, where_a), (b, where_b)):
        got = b"".join(archive[f.volume_index * 1024 + f.volume_offset:][:f.volume_length] for f in where.fragments)
        assert got == (root / "reports" / "annual_2024.pdf").read_bytes()


def test_as_file_seeks_reads_and_tells_alike(dataset):
    theirs, mine = record_both(dataset)
    a, b = whole(theirs), whole(mine)
    for tape, archive in ((theirs, a), (mine, b)):
        f = tape.as_file()
        steps = [f.read(100), f.tell(), f.seek(5000), f.read(10), f.tell(), f.seek(-10, io.SEEK_END), f.read(),
                 f.tell(), f.seek(-20, io.SEEK_CUR), f.read(5), f.read(0), f.seek(len(archive)), f.read(7)]
        assert steps == [archive[:100], 100, 5000, archive[5000:5010], 5010, len(archive) - 10, archive[-10:],
                         len(archive), len(archive) - 20, archive[-20:-15], b"", len(archive), b""]
        with pytest.raises(ValueError):
            f.seek(len(archive) + 1)
        with pytest.raises(ValueError):
            f.seek(-1)
        assert f.seekable() and f.readable()
        f.seek(0)
        with tarfile.open(fileobj=f) as tf:
            assert len(tf.getnames()) == 10
        f.close()
        with pytest.raises(OSError):
            f.read(1)


def test_sizes_and_slices_are_computed_alike():
    for value in [512, 4096, "512", "1KB", "1kb", "1K", "1KiB", "1.5GB", "2MB", "1TB", "0.5KB"]:
        assert ours.parse_size(value) == real.parse_size(value), value
    for bad in [0, -512, 100, "1 GB", "1XB", "0.3KB", "abc", ""]:
        with pytest.raises(ValueError):
            real.parse_size(bad)
        with pytest.raises(ValueError):
            ours.parse_size(bad)
    with pytest.raises(TypeError):
        ours.parse_size(1.5)
    for n in [1, 512, 1000, 1024, 1536, 1 << 20, 1536 << 20, (1 << 30) + 1, 3 << 40]:
        assert ours.format_size(n) == real.format_size(n), n
    assert list(ours.calculate_segments(10_000, 4096)) == list(real.calculate_segments(10_000, 4096))
    for start, size, volume in [(0, 1, 512), (512, 3000, 1024), (1024, 0, 512), (7 * 512, 10_000, 4096)]:
        assert [f.to_dict() for f in ours.calculate_file_slices(start, size, volume)] == \
               [f.to_dict() for f in real.calculate_file_slices(start, size, volume)]


def test_the_same_errors_where_tartape_raises(dataset, tmp_path):
    theirs, mine = record_both(dataset)
    for lib, tape in ((real, theirs), (ours, mine)):
        with pytest.raises(lib.InvalidOffsetError):
            next(tape.play(start_offset=tape.total_size))
        with pytest.raises(lib.VolumeNotFoundError):
            tape.get_volume(index=99, size=1024)
        with pytest.raises(KeyError):
            lib.open_catalog(tape).locate("my_dataset/nothing")
        with pytest.raises(lib.TapeNotFoundError):
            lib.open(tmp_path / "home")
        with pytest.raises(lib.TapeNotFoundError):
            lib.open_catalog(tmp_path / "none.tartape")
        with pytest.raises(FileExistsError):
            lib.record(dataset, catalog_path=tape)
        with pytest.raises(lib.VolumeStateError):
            tape.get_volume(index=0, size=1024).read(1)  # not entered with 'with'
        assert lib.exists(dataset, catalog_path=tape) and lib.get_tape(tmp_path / "home") is None


def test_a_file_changed_after_recording_stops_both_streams(dataset):
    theirs, mine = record_both(dataset)
    (dataset / "reports" / "q1.csv").write_bytes(b"rewritten, and longer than before" * 10)
    for lib, tape in ((real, theirs), (ours, mine)):
        with pytest.raises(lib.TarIntegrityError):
            b"".join(tape.play())
        assert not tape.verify()


# --- the differences the README lists ------------------------------------------------------


def test_listed_differences_owners_modes_hard_links_and_long_names(tmp_path):
    root = build_report_tree(tmp_path, "my_dataset")
    os.chmod(root / "a.txt", 0o600)
    os.link(root / "a.txt", root / "docs" / "hard.txt")
    theirs, mine = record_both(root)
    with tarfile.open(fileobj=io.BytesIO(whole(theirs))) as ta, tarfile.open(fileobj=io.BytesIO(whole(mine))) as tb:
        a, b = ta.getmember("my_dataset/a.txt"), tb.getmember("my_dataset/a.txt")
        assert (a.mode, a.uname) == (0o644, "root") and (b.mode, b.uname) == (0o600, "")
        assert ta.getmember("my_dataset/docs/hard.txt").isfile()
        assert tb.getmember("my_dataset/docs/hard.txt").islnk()
    long = root / ("x" * 120)
    long.mkdir()
    with pytest.raises(real.PathConstraintReportError):
        real.record(root, catalog_path=tmp_path / "long-real.tartape")
    tape = ours.record(root, catalog_path=tmp_path / "long-ours.tartape")
    assert f"my_dataset/{'x' * 120}" in [t.arc_path for t in tape.inspect()]


def test_volumes_with_an_observer_send_the_same_events(dataset):
    theirs, mine = record_both(dataset)
    for size in (1024, 1536, 4096):
        seen = []
        for tape in (theirs, mine):
            observer = Recorder()
            for volume in tape.iter_volumes(size=size, observer=observer):
                with volume:
                    while volume.read(300):
                        pass
            seen.append(observer.seen)
        assert seen[0] == seen[1] and seen[0], size


def test_layouts_are_registered_found_and_defaulted_alike(dataset):
    theirs, mine = record_both(dataset)
    answers = []
    for lib, tape in ((real, theirs), (ours, mine)):
        catalog = lib.open_catalog(tape)
        assert catalog.default_layout.tag == "monolithic" and catalog.default_layout.total_volumes == 1
        catalog.register_layout(volume_size=1024, tag="s3_plan")
        catalog.register_layout(volume_size="2KB", tag="tg_plan")
        assert [layout.tag for layout in catalog.layouts] == ["s3_plan", "tg_plan"]
        assert (catalog.get_layout("s3_plan").volume_size, catalog.get_layout(2048).tag) == (1024, "tg_plan")
        assert catalog.get_layout("4KB").is_virtual and not catalog.get_layout("s3_plan").is_virtual
        with pytest.raises(lib.AmbiguousLayoutError):
            catalog.default_layout
        with pytest.raises(lib.LayoutNotFoundError):
            catalog.get_layout("no such plan")
        catalog.register_layout(volume_size=1536, tag="preferred", is_default=True)
        assert catalog.default_layout.tag == "preferred"
        where = catalog.locate("my_dataset/reports/big.csv")
        assert where.spans_multiple_volumes
        answers.append((gps(where), [(v.volume_index, v.start_offset, v.size, v.name.split("_")[0])
                                     for v in catalog.get_layout("preferred").volumes]))
        catalog.close()
        with pytest.raises(lib.ReadOnlyCatalogError):
            lib.open_catalog(tape, read_only=True).register_layout(volume_size=1024)
    assert answers[0] == answers[1]


def test_gps_of_every_member_alike(dataset):
    theirs, mine = record_both(dataset)
    fields = ("arc_path", "rel_path", "size", "mode", "is_dir", "is_symlink", "linkname", "start_offset")
    for size in (None, 1024):
        rows = [[(tuple(getattr(t, f) for f in fields), gps(t)[2]) for t in tape.iter_gps(size)]
                for tape in (theirs, mine)]
        # tartape stores its own modes (0644/0755); tartapefs the files' own, which these are.
        assert rows[0] == rows[1] and len(rows[0]) == 10


def test_a_volume_named_by_its_byte_range_alike(dataset):
    theirs, mine = record_both(dataset)
    a, b = whole(theirs), whole(mine)
    for tape, archive in ((theirs, a), (mine, b)):
        volume = tape.get_volume("part-x.tar", 3, vol_start=1024, vol_end=4096)
        assert (volume.name, volume.index, volume.size) == ("part-x.tar", 3, 3072)
        with volume:
            assert volume.read() == archive[1024:4096] and volume.is_completed
        assert volume.checksum == hashlib.sha256(archive[1024:4096]).hexdigest()
        with pytest.raises(ValueError):
            tape.get_volume("bad", 0, vol_start=4096, vol_end=1024)
