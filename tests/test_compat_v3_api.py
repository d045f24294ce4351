"""tartapefs.compat.v3 beyond its README's examples: ephemeral recordings, the indexes
it opens and refuses, volumes in threads and out of order, canary verification, and the
arguments it cannot honour."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

import pytest

from tartapefs import Tape as CoreTape
from trees import archive_of, tar_files, tree_files

pytestmark = pytest.mark.index


def archive() -> bytes:
    with CoreTape.open("my_dataset.tartape") as tape:
        return archive_of(tape)


def test_an_ephemeral_recording_leaves_nothing_behind(my_dataset, tmp_path, monkeypatch):
    import tartapefs.compat.v3 as tartape

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with tartape.record_ephemeral("./my_dataset", checksum="md5") as tape:
        (folder,) = private.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and os.fspath(tape).startswith(str(folder))
        ends = []
        data = b"".join(tape.play(on_event=lambda e: ends.append(e) if e.type == "file_end" else None))
    assert tar_files(data) == tree_files(my_dataset)
    assert list(private.iterdir()) == [] and sorted(os.listdir(tmp_path)) == ["my_dataset", "tmp"]
    sums = {e.entry.info.arc_path: e.metadata.md5sum for e in ends if e.metadata.md5sum}
    assert sums == {name: hashlib.md5(data).hexdigest() for name, data in tree_files(my_dataset).items()}


def test_open_finds_the_index_tartapefs_itself_recorded(my_dataset):
    import tartapefs.compat.v3 as tartape
    from tartapefs import TapeRecorder

    assert tartape.get_tape("./my_dataset") is None and not tartape.exists("./my_dataset")
    TapeRecorder("./my_dataset").commit()
    assert tartape.discover("./my_dataset") == my_dataset / ".tartape" / "index.db"
    with tartape.open("./my_dataset") as tape:
        assert tape == my_dataset / ".tartape" / "index.db"
        assert tar_files(tape.as_file().read()) == tree_files(my_dataset)


def test_a_catalog_written_by_tartape_itself_is_refused_in_one_line(my_dataset):
    import tartape as real

    import tartapefs.compat.v3 as tartape

    real.record("./my_dataset", catalog_path="theirs.tartape")
    with pytest.raises(tartape.TapeCorruptedError, match="theirs.tartape: not a readable tartapefs index .*written by the tartape package .* record the folder again"):
        tartape.open_catalog("theirs.tartape")


def test_volumes_of_one_tape_read_in_four_threads_each_get_their_checksum(my_dataset):
    from concurrent.futures import ThreadPoolExecutor

    import tartapefs.compat.v3 as tartape

    tape = tartape.record("./my_dataset")
    volumes = list(tape.iter_volumes(size=1024))

    def read(volume):
        with volume:
            return volume.read(), volume.md5sum

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(read, volumes))
    data = archive()
    assert b"".join(r[0] for r in results) == data and len(results) == -(-len(data) // 1024)
    assert [r[1] for r in results] == [hashlib.sha256(r[0]).hexdigest() for r in results]


def test_a_volume_read_out_of_order_has_no_checksum_until_computed(my_dataset):
    import tartapefs.compat.v3 as tartape

    tape = tartape.record("./my_dataset")
    volume = tape.get_volume(index=1, size=4096)
    data = archive()[4096:8192]
    with volume:
        volume.seek(100)
        assert volume.read() == data[100:]
        assert volume.checksum is None and volume.is_completed
        assert volume.compute_checksum("md5") == hashlib.md5(data).hexdigest() == volume.checksum
    with pytest.raises(tartape.InvalidArgumentError):
        volume.compute_checksum("crc32")


def test_canary_verify_checks_a_sample_that_finds_the_newest_change(tmp_path, monkeypatch):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(80):
        (root / f"f{i:02d}").write_bytes(b"x" * i)
        os.utime(root / f"f{i:02d}", (1_600_000_000 + i, 1_600_000_000 + i))
    import tartapefs.compat.v3 as tartape

    tape = tartape.record(root)
    canary = tape.verify(deep=False)
    assert canary and canary.mode == "canary" and canary.total_tracks == 81 and 10 < canary.checked_count < 40
    (root / "f79").write_bytes(b"y" * 79)  # the newest file: always in the sample
    os.utime(root / "f03", (1, 1))  # early, old: outside the sample
    report = tape.verify(deep=False)
    assert [(d.arc_path, d.reason) for d in report.errors] == [("many/f79", "mtime_mismatch")]
    report = tape.verify()
    assert [(d.arc_path, d.reason) for d in report.errors] == [("many/f03", "mtime_mismatch"),
                                                                ("many/f79", "mtime_mismatch")]
    with pytest.raises(tartape.TarIntegrityError, match="many/f03"):
        tape.verify(raise_exception=True)


def test_arguments_tartapefs_cannot_honour_are_refused_in_one_line(my_dataset):
    import tartapefs.compat.v3 as tartape

    with pytest.raises(tartape.InvalidArgumentError, match="callable is not supported"):
        tartape.record("./my_dataset", exclude=lambda path: False)
    with pytest.raises(tartape.InvalidArgumentError, match="checksum 'crc'"):
        tartape.record("./my_dataset", checksum="crc")
    tape = tartape.record("./my_dataset")
    with pytest.raises(tartape.InvalidArgumentError, match="naming template"):
        next(tape.iter_volumes(size=1024, naming_template="{nope}.tar"))
    assert not os.path.exists("my_dataset/.tartape")


def test_record_writes_nothing_through_a_symlink_planted_at_the_catalog(my_dataset, tmp_path):
    import tartapefs.compat.v3 as tartape

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, tmp_path / "my_dataset.tartape")
    with pytest.raises(tartape.CatalogExistsError):
        tartape.record("./my_dataset")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.tartape")  # exists() is False for it
    with pytest.raises(tartape.CatalogExistsError):
        tartape.record("./my_dataset", catalog_path="dangling.tartape")
    tape = tartape.record("./my_dataset", overwrite=True)  # replaces the link itself
    assert victim.read_bytes() == b"precious" and not (tmp_path / "my_dataset.tartape").is_symlink()
    assert tar_files(tape.as_file().read()) == tree_files(my_dataset)
    assert sorted(os.listdir(tmp_path)) == ["dangling.tartape", "my_dataset", "my_dataset.tartape", "victim"]
    with pytest.raises(tartape.InvalidArgumentError, match="inside the folder it describes"):
        tartape.record("./my_dataset", catalog_path="my_dataset/x.tartape")
    assert not (my_dataset / "x.tartape").exists()
    with pytest.raises(tartape.InvalidArgumentError, match="not a folder"):
        tartape.record(tmp_path / "no" / "such" / "folder")
    assert not (tmp_path / "no").exists()


def test_a_stream_cut_inside_a_member_sends_no_end_for_it(my_dataset):
    import tartapefs.compat.v3 as tartape
    from tartapefs.compat._v3_stream import play_bytes

    tape = tartape.record("./my_dataset")
    pdf = tape.locate("my_dataset/reports/annual_2024.pdf")
    start = next(t for t in tape.inspect() if t.arc_path.endswith("annual_2024.pdf")).start_offset
    events = []
    with CoreTape.open("my_dataset.tartape") as core:
        data = b"".join(play_bytes(core, str(my_dataset), start, start + 1000, 1 << 20, on_event=events.append))
    assert data == archive()[start:start + 1000] and pdf.file_size == 3000
    assert [(e.type, e.entry.info.arc_path) for e in events] == [("file_start", "my_dataset/reports/annual_2024.pdf")]
