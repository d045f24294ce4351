"""A tape pins the recording it opened.

``Tape.discover(src)``, then the folder recorded again (another process, other rows): every
reader, player, stream and file system made from that tape afterwards serves the recording
the tape opened, byte for byte, never the new rows under the old size.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tartapefs import Tape, TapePlayer, TapeReader
from tartapefs.stream import FILE_DATA
from trees import archive_of, build_small_tree, record

pytestmark = pytest.mark.index

TARTAPE = Path(sys.executable).parent / "tartape"


def record_again(src: Path) -> None:
    """New files sorted first, so every later member moves; recorded by another process."""
    for i in range(3):
        (src / f"0-new-{i}").write_bytes(b"n" * (700 * (i + 1)))
    done = subprocess.run([TARTAPE, "record", str(src)], capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def pinned(tmp_path):
    """A tape opened before its folder was recorded again, and the bytes it had."""
    src = build_small_tree(tmp_path)
    tape = record(src)
    expected = archive_of(tape)
    record_again(src)
    with Tape.discover(str(src)) as new:
        assert new.total_size != tape.total_size  # the recording really changed
    yield src, tape, expected
    tape.close()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


def test_a_reader_made_after_a_new_recording_serves_the_recording_its_tape_opened(pinned):
    src, tape, expected = pinned
    with TapeReader(tape) as reader:
        assert reader.read(0, tape.total_size) == expected
        assert reader.read(700, 5000) == expected[700:5700]
    assert not [n for n in names(expected) if "0-new" in n]


def test_a_player_made_after_a_new_recording_plays_the_recording_its_tape_opened(pinned):
    src, tape, expected = pinned
    played = b"".join(e.data for e in TapePlayer(tape).play() if e.type == FILE_DATA)
    assert played == expected
    resumed = b"".join(e.data for e in TapePlayer(tape).play(start_offset=1000) if e.type == FILE_DATA)
    assert resumed == expected[1000:]


def test_the_file_system_made_after_a_new_recording_serves_the_recording_its_tape_opened(pinned):
    trio = pytest.importorskip("trio")
    pytest.importorskip("pyfuse3")
    from tartapefs.fusefs import TapeFS

    src, tape, expected = pinned
    fs = TapeFS({"dataset.tar": tape})
    try:
        inode = trio.run(fs.lookup, 1, b"dataset.tar").st_ino
        fh = trio.run(fs.open, inode, os.O_RDONLY).fh
        assert trio.run(fs.read, fh, 0, len(expected) + 10) == expected
    finally:
        fs.close()


def test_stream_reads_the_recording_it_made_or_opened(tmp_path, monkeypatch, capsysbinary):
    """`tartape stream` opens (or records) a tape, then reads it: a recording in between
    must not reach the read."""
    from tartapefs import cli
    from tartapefs.tape import Tape

    src = build_small_tree(tmp_path)
    with record(src) as tape:
        expected = archive_of(tape)
    real_reader = Tape.reader  # what the command reads each archive through

    def reader_after_a_new_recording(self, *args, **kw):
        record_again(src)
        return real_reader(self, *args, **kw)

    monkeypatch.setattr(Tape, "reader", reader_after_a_new_recording)
    out = tmp_path / "out.tar"
    assert cli.main(["stream", str(src), "-o", str(out)]) == 0
    assert out.read_bytes() == expected
