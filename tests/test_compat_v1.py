"""The first TarTape's API (tartapefs.compat.v1): its README's examples run with only
the import changed, and what it promised: recording without a step of its own, in a
private temporary index that is removed, and a stream that stops on a changed file."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tartapefs import SourceChangedError, TapeRecorder
from tartapefs.compat.v1 import StreamIntegrityError, TarEventType, TarTape
from tartapefs.errors import UsageError
from trees import build_report_tree, build_small_tree, content, tree_differences

pytestmark = pytest.mark.index

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder for this test only, so the test sees every temporary index."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def members_of(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


# --- the README's examples ------------------------------------------------------------------


def test_readme_basic_use_writes_a_tar_of_the_folder(tmp_path, monkeypatch, private_tmp):
    build_report_tree(tmp_path, "mis_datos")
    monkeypatch.chdir(tmp_path)

    from tartapefs.compat.v1 import TarTape, TarEventType

    tape = TarTape()
    tape.add_folder("./mis_datos")

    with open("backup.tar", "wb") as f:
        for event in tape.stream():
            if event.type == TarEventType.FILE_DATA:
                f.write(event.data)

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / "backup.tar", "-C", out], check=True)
    assert tree_differences(tmp_path / "mis_datos", out / "mis_datos") == []
    tape.close()
    assert os.listdir(private_tmp) == []


# The second example archives /var/log/app. It runs in a mount namespace of its own, where
# /var/log is an empty tmpfs and /var/log/app the test's tree: the host's /var/log is never
# touched, and concurrent runs cannot meet there.
EXAMPLE_MONITORING = '''
from tartapefs.compat.v1 import TarTape, TarEventType

tape = TarTape()
tape.add_folder("/var/log/app")

for event in tape.stream():
    if event.type == TarEventType.FILE_START:
        # Se emite antes de procesar un archivo
        print(f"Archivando: {event.entry.arc_path} ({event.entry.size} bytes)")

    elif event.type == TarEventType.FILE_DATA:
        # Bytes crudos del TAR (headers, contenido y padding)
        # Aquí podrían enviarse directamente a red o a un bucket
        pass

    elif event.type == TarEventType.FILE_END:
        # Se emite al finalizar un archivo
        # Incluye metadatos como el hash calculado durante la lectura
        print(f"Archivo completado. MD5: {event.metadata.md5sum}")

    elif event.type == TarEventType.TAPE_COMPLETED:
        print("Archivo TAR finalizado correctamente.")
'''


def test_readme_monitoring_prints_each_member_with_its_size_and_md5(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the example its own /var/log")
    tree = build_report_tree(tmp_path, "app")
    script = tmp_path / "example.py"
    script.write_text(EXAMPLE_MONITORING)
    shell = 'mount -t tmpfs none /var/log && mkdir /var/log/app && mount --bind "$1" /var/log/app && exec "$2" "$3"'
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh", tree, sys.executable, script],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if run.returncode and "unshare failed" in run.stderr:
        pytest.skip(f"no mount namespaces here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr

    expected = []
    for rel in ["", "a.txt", "docs", "docs/guide.md", "empty", "link", "reports", "reports/annual_2024.pdf",
                "reports/q1.csv"]:
        path = tree / rel
        is_file = path.is_file() and not path.is_symlink()
        name = "app/" + rel if rel else "app"
        expected.append(f"Archivando: {name} ({path.stat().st_size if is_file else 0} bytes)")
        md5 = hashlib.md5(path.read_bytes()).hexdigest() if is_file else None
        expected.append(f"Archivo completado. MD5: {md5}")
    expected.append("Archivo TAR finalizado correctamente.")
    assert run.stdout.splitlines() == expected


# --- what v1 promised ---------------------------------------------------------------------


def stream_bytes(tape: TarTape, chunk_size: int = 64 * 1024) -> bytes:
    return b"".join(e.data for e in tape.stream(chunk_size) if e.type == TarEventType.FILE_DATA)


def test_events_carry_offsets_sizes_and_md5_that_tarfile_and_the_files_confirm(small_tree, private_tmp):
    with TarTape() as tape:
        tape.add_folder(small_tree)
        events = list(tape.stream(chunk_size=700))
    data = b"".join(e.data for e in events if e.type == TarEventType.FILE_DATA)
    infos = members_of(data)
    starts = [e for e in events if e.type == TarEventType.FILE_START]
    ends = [e for e in events if e.type == TarEventType.FILE_END]
    assert [e.entry.arc_path for e in starts] == [i.name for i in infos]
    assert [e.metadata.start_offset for e in starts] == [i.offset for i in infos]
    assert [e.entry.size for e in starts] == [i.size for i in infos]
    assert all(len(e.data) <= 700 for e in events if e.type == TarEventType.FILE_DATA and e.entry)
    for start, end, info in zip(starts, ends, infos):
        assert end.entry == start.entry
        if info.isfile():
            assert end.metadata.md5sum == hashlib.md5((small_tree.parent / info.name).read_bytes()).hexdigest()
            assert start.entry.source_path == str(small_tree.parent / info.name)
        else:
            assert end.metadata.md5sum is None
        assert start.entry.is_dir == info.isdir() and start.entry.is_symlink == info.issym()
    assert events[-1].type == TarEventType.TAPE_COMPLETED
    assert events[-2].entry is None and events[-2].data == bytes(1024)


def test_the_temporary_index_is_private_and_removed_on_close_and_on_collection(small_tree, private_tmp):
    tape = TarTape()
    tape.add_folder(small_tree)
    (folder,) = private_tmp.iterdir()
    st = folder.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert [p.name for p in folder.iterdir()] == ["index.db"]
    assert stat.S_IMODE((folder / "index.db").stat().st_mode) == 0o600
    assert not (small_tree / ".tartape").exists()  # nothing written into the folder
    tape.close()
    assert list(private_tmp.iterdir()) == []

    tape.add_folder(small_tree)  # added again after close(): cleaned up again
    assert len(list(private_tmp.iterdir())) == 1
    del tape
    assert list(private_tmp.iterdir()) == []


def test_a_folder_with_its_own_index_is_streamed_from_it_without_a_temporary_one(small_tree, private_tmp):
    TapeRecorder(small_tree).commit()
    with TarTape() as tape:
        tape.add_folder(small_tree)
        assert list(private_tmp.iterdir()) == []
        data = stream_bytes(tape)
    # Other options than the index was recorded with: a temporary index after all.
    with TarTape(anonymize=False) as tape:
        tape.add_folder(small_tree)
        assert len(list(private_tmp.iterdir())) == 1
    with TarTape() as tape:
        tape.add_folder(small_tree, exclude="*.txt")
        assert len(list(private_tmp.iterdir())) == 1
        assert not any(i.name.endswith(".txt") for i in members_of(stream_bytes(tape)))
    assert [i.name for i in members_of(data)] == ["data", "data/a.txt", "data/b.txt", "data/link", "data/sub",
                                                  "data/sub/c.txt", "data/sub/d.txt"]
    # A stale index is not silently re-recorded: the stream names the changed file.
    (small_tree / "b.txt").write_bytes(b"changed")
    with TarTape() as tape:
        tape.add_folder(small_tree)
        with pytest.raises(StreamIntegrityError, match="data/b.txt: source changed since recording: size 3 -> 7"):
            stream_bytes(tape)


def test_a_file_that_changes_size_while_streaming_stops_the_stream_before_its_bytes(tmp_path, private_tmp):
    root = tmp_path / "logs"
    root.mkdir()
    for name in ("a.log", "b.log", "c.log"):
        (root / name).write_bytes(content(name.encode(), 200_000))
    tape = TarTape()
    tape.add_folder(root)
    sent = bytearray()
    events = tape.stream()
    with pytest.raises(StreamIntegrityError) as caught:
        for event in events:
            if event.type == TarEventType.FILE_START and event.entry.arc_path == "logs/a.log":
                with open(root / "c.log", "ab") as f:
                    f.write(b"one more line\n")
            if event.type == TarEventType.FILE_DATA:
                sent += event.data
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, SourceChangedError)
    assert caught.value.member == "logs/c.log" and "size 200000 -> 200014" in str(caught.value)
    assert content(b"c.log", 200_000)[:4096] not in sent
    tape.close()


def test_several_folders_make_one_archive_with_one_footer(tmp_path, private_tmp):
    first = build_small_tree(tmp_path, "first")
    second = build_report_tree(tmp_path, "second")
    with TarTape() as tape:
        tape.add_folder(first)
        tape.add_folder(second, recursive=False)
        events = list(tape.stream())
    data = b"".join(e.data for e in events if e.type == TarEventType.FILE_DATA)
    infos = members_of(data)
    names = [i.name for i in infos]
    assert names[:7] == ["first", "first/a.txt", "first/b.txt", "first/link", "first/sub", "first/sub/c.txt",
                         "first/sub/d.txt"]
    assert names[7:] == ["second", "second/a.txt", "second/docs", "second/empty", "second/link", "second/reports"]
    starts = [e.metadata.start_offset for e in events if e.type == TarEventType.FILE_START]
    assert starts == [i.offset for i in infos]
    assert data.endswith(bytes(1024)) and len(data) == infos[-1].offset + 512 + 1024
    assert sum(e.type == TarEventType.TAPE_COMPLETED for e in events) == 1


def test_unsupported_calls_are_one_line_usage_errors(small_tree, private_tmp):
    tape = TarTape()
    with pytest.raises(UsageError, match="nothing to stream"):
        list(tape.stream())
    with pytest.raises(UsageError, match="add_file is not supported"):
        tape.add_file(small_tree / "a.txt")
    with pytest.raises(UsageError, match="callable is not supported"):
        tape.add_folder(small_tree, exclude=lambda path: False)
    with pytest.raises(UsageError, match="no such directory"):
        tape.add_folder(small_tree / "missing")
    assert list(private_tmp.iterdir()) == []
