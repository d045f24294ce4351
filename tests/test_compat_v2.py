"""TarTape 2.0's README examples, run against tartapefs' own API with only the import
changed (2.0's API is tartapefs'), each checked against what it should produce."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from tartapefs import Tape, TapeReader
from trees import GIB, build_report_tree, tree_differences

pytestmark = pytest.mark.index


@pytest.fixture
def massive_dataset(tmp_path, monkeypatch):
    """./massive_dataset in a fresh working directory."""
    root = build_report_tree(tmp_path, "massive_dataset")
    monkeypatch.chdir(tmp_path)
    return root


def test_readme_recording_the_tape_prints_the_fingerprint(massive_dataset, capsys):
    from tartapefs import TapeRecorder

    # This creates the .tartape metadata folder inside your dataset
    recorder = TapeRecorder("./massive_dataset")
    fingerprint = recorder.commit()

    print(f"Tape ready. Fingerprint: {fingerprint}")

    assert (massive_dataset / ".tartape" / "index.db").is_file()
    tape = Tape.discover(massive_dataset)
    assert len(tape.fingerprint) == 64
    assert capsys.readouterr().out == f"Tape ready. Fingerprint: {tape.fingerprint}\n"


def test_readme_basic_streaming_writes_an_archive_tar_extracts(massive_dataset, tmp_path):
    from tartapefs import TapeRecorder

    TapeRecorder("./massive_dataset").commit()

    from tartapefs import Tape, TapePlayer

    # Discover the tape and start the player
    tape = Tape.discover("./massive_dataset")
    player = TapePlayer(tape, source_root="./massive_dataset")

    with open("backup.tar", "wb") as f:
        # Every event contains data chunks or metadata
        for event in player.play():
            if event.type == "file_data":
                f.write(event.data)

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", "backup.tar", "-C", out], check=True)
    assert tree_differences(massive_dataset, out / "massive_dataset") == []


def test_readme_resuming_at_5_gib_sends_the_archive_from_that_byte(tmp_path, monkeypatch):
    # A 5 GiB + 8 KiB file that is a hole: the stream resumes inside it.
    root = build_report_tree(tmp_path, "massive_dataset", big=5 * GIB + 8192)
    monkeypatch.chdir(tmp_path)
    from tartapefs import TapePlayer, TapeRecorder

    TapeRecorder("./massive_dataset").commit()
    tape = Tape.discover("./massive_dataset")
    player = TapePlayer(tape, source_root="./massive_dataset")
    uploaded = bytearray()

    def upload_to_cloud(data: bytes) -> None:
        uploaded.extend(data)

    # If the previous upload failed at exactly 5GB...
    start_offset = 5 * 1024 * 1024 * 1024

    for event in player.play(start_offset=start_offset):
        # This skips all previous files and starts streaming
        # from the exact byte where the failure occurred.
        upload_to_cloud(event.data)

    assert len(uploaded) == tape.total_size - start_offset
    with TapeReader(tape) as reader:
        assert uploaded == reader.read(start_offset, tape.total_size)
    # What follows the resume point, read back by tarfile: the rest of big.bin, then
    # every later member whole.
    big = tape.locate("massive_dataset/big.bin")
    rest = uploaded[big.body_end - start_offset - 4 : big.body_end - start_offset]
    assert rest == b">BIG"
    with tarfile.open(fileobj=io.BytesIO(bytes(uploaded[big.end - start_offset:]))) as tf:
        names = tf.getnames()
        pdf = tf.extractfile("massive_dataset/reports/annual_2024.pdf").read()
    assert names == ["massive_dataset/docs", "massive_dataset/docs/guide.md", "massive_dataset/empty",
                     "massive_dataset/link", "massive_dataset/reports", "massive_dataset/reports/annual_2024.pdf",
                     "massive_dataset/reports/q1.csv"]
    assert pdf == (root / "reports" / "annual_2024.pdf").read_bytes()


def test_readme_monitoring_prints_offsets_and_md5_that_tarfile_and_the_files_confirm(massive_dataset, capsys):
    from tartapefs import TapePlayer, TapeRecorder

    TapeRecorder("./massive_dataset").commit()
    tape = Tape.discover("./massive_dataset")
    player = TapePlayer(tape, source_root="./massive_dataset")

    for event in player.play():
        if event.type == "file_start":
            print(f"Archiving: {event.entry.arc_path} at offset {event.metadata.start_offset}")

        elif event.type == "file_end":
            # Each file reports its MD5 hash calculated on-the-fly
            print(f"Done: {event.entry.arc_path} | Hash: {event.metadata.md5sum}")

    with TapeReader(tape) as reader, tarfile.open(fileobj=io.BytesIO(reader.read(0, tape.total_size))) as tf:
        infos = tf.getmembers()
    expected = []
    for info in infos:
        name = info.name + ("/" if info.isdir() else "")
        body = (massive_dataset.parent / info.name).read_bytes() if info.isfile() else b""
        expected += [f"Archiving: {name} at offset {info.offset}", f"Done: {name} | Hash: {hashlib.md5(body).hexdigest()}"]
    assert capsys.readouterr().out.splitlines() == expected
    assert len(expected) == 2 * 9 and os.path.isdir(massive_dataset)
