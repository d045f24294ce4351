"""tartape 3.x's README examples (tartape 3.0.3), run with only the import lines changed:
``import tartape`` becomes ``import tartapefs.compat.v3 as tartape``, and the network
clients (requests, boto3, a socket) are the stand-ins of tests/fakeclients.py. Each test
checks what its example prints and produces against the source files and tarfile."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile

import pytest

import fakeclients
from tartapefs import Tape as CoreTape
from tartapefs import TapeReader
from trees import GIB, build_report_tree, content, tar_files, tree_files

pytestmark = pytest.mark.index


@pytest.fixture
def network_socket():
    return fakeclients.Socket()


def archive(catalog: str = "my_dataset.tartape") -> bytes:
    """The archive as tartapefs' own reader gives it."""
    with CoreTape.open(catalog) as tape, TapeReader(tape, "my_dataset") as reader:
        return reader.read(0, tape.total_size)


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


# --- Quickstart ----------------------------------------------------------------------------


def test_readme_step_1_records_and_prints_size_and_count(my_dataset, capsys):
    import tartapefs.compat.v3 as tartape

    # Scans the folder and creates './my_dataset.tartape' alongside it
    tape = tartape.record("./my_dataset")

    print(f"Total archive size: {tape.total_size:,} bytes")
    print(f"Total files:        {tape.file_count}")

    data = archive()
    assert os.path.isfile("my_dataset.tartape") and not (my_dataset / ".tartape").exists()
    assert capsys.readouterr().out.splitlines() == [
        f"Total archive size: {len(data):,} bytes",
        f"Total files:        {len(members(data))}",
    ]


def test_readme_step_2_reads_the_archive_like_a_file(my_dataset):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    with tartape.open("./my_dataset") as tape:
        archive_file = tape.as_file()

        # Read bytes on demand just like an open file
        chunk = archive_file.read(64 * 1024)

    data = archive()
    assert len(data) < 64 * 1024 and chunk == data
    assert tar_files(chunk) == tree_files(my_dataset)


# --- Practical examples ----------------------------------------------------------------------


def test_readme_1_uploads_the_archive_with_requests(my_dataset):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    from fakeclients import requests

    with tartape.open("./my_dataset") as tape:
        # 'as_file()' acts like an open file on disk
        response = requests.put(
            "https://storage.example.com/backup.tar", data=tape.as_file()
        )

    assert response.ok
    sent = fakeclients.cloud.objects["https://storage.example.com/backup.tar"].data
    assert sent == archive() and tar_files(sent) == tree_files(my_dataset)


def test_readme_2_uploads_1gb_volumes_with_boto3_and_prints_their_checksums(my_dataset, capsys):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    from fakeclients import boto3

    s3 = boto3.client("s3")
    bucket = "my-company-backups"

    with tartape.open("./my_dataset") as tape:
        # Split the archive into 1 GB virtual chunks ('500MB', '2GB', etc.)
        for volume in tape.iter_volumes(size="1GB"):
            with volume:
                print(f"Uploading part: {volume.name} ({volume.size} bytes)...")

                # Each volume behaves like a separate open file
                s3.upload_fileobj(
                    Fileobj=volume, Bucket=bucket, Key=f"backups/{volume.name}"
                )

                # In-flight checksum is calculated passively during upload (zero extra I/O)
                print(f"Part uploaded - {volume.checksum_algorithm}: {volume.checksum}")

    data = archive()
    name = f"my_dataset_{tape.fingerprint[:8]}.tar.001"
    assert fakeclients.cloud.objects[f"{bucket}/backups/{name}"].data == data
    assert capsys.readouterr().out.splitlines() == [
        f"Uploading part: {name} ({len(data)} bytes)...",
        f"Part uploaded - sha256: {hashlib.sha256(data).hexdigest()}",
    ]


@pytest.mark.slow  # four 1 GiB volumes read and checksummed
def test_readme_3_uploads_four_1gb_parts_in_parallel(tmp_path, monkeypatch, capsys):
    fakeclients.reset()
    build_report_tree(tmp_path, "my_dataset", big=3 * GIB + 4096)  # a hole: four 1 GiB parts
    monkeypatch.chdir(tmp_path)
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    from concurrent.futures import ThreadPoolExecutor
    from fakeclients import boto3

    s3 = boto3.client("s3")
    bucket = "my-company-backups"

    def upload_single_part(part_index: int):
        # Open the tape and request only the specific volume
        with tartape.open("./my_dataset") as tape:
            volume = tape.get_volume(index=part_index, size="1GB")
            with volume:
                s3.upload_fileobj(
                    Fileobj=volume, Bucket=bucket, Key=f"backups/{volume.name}"
                )
                print(f"Finished uploading part #{part_index}")

    # Upload parts 0, 1, 2, and 3 in parallel
    with ThreadPoolExecutor(max_workers=4) as executor:
        executor.map(upload_single_part, range(4))

    out = capsys.readouterr().out  # print() from four threads: lines may interleave
    assert sorted(re.findall(r"Finished uploading part #\d", out)) == [f"Finished uploading part #{i}" for i in range(4)]
    assert out.count("\n") == 4 and len(out) == 4 * len("Finished uploading part #0\n")
    objects = fakeclients.cloud.objects
    assert sorted(objects) == [f"{bucket}/backups/virtual_part_{i:03d}.tar" for i in range(1, 5)]
    with CoreTape.open("my_dataset.tartape") as tape, TapeReader(tape, "my_dataset") as reader:
        assert 3 * GIB < tape.total_size <= 4 * GIB
        for i in range(4):
            stored = objects[f"{bucket}/backups/virtual_part_{i + 1:03d}.tar"]
            assert stored.size == min(GIB, tape.total_size - i * GIB)
            start, end, sample = i * GIB, i * GIB + stored.size, min(fakeclients.SAMPLE, stored.size)
            assert stored.head == reader.read(start, sample), i
            assert stored.tail == reader.read(end - sample, sample), i
        assert stored.tail.endswith(bytes(1024)) and b">BIG" in objects[f"{bucket}/backups/virtual_part_004.tar"].head


def test_readme_4_resumes_the_upload_at_500_mb(tmp_path, monkeypatch, network_socket):
    build_report_tree(tmp_path, "my_dataset", big=500 * (1 << 20) + 8192)  # a hole past 500 MiB
    monkeypatch.chdir(tmp_path)
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    # The byte offset where your upload dropped
    FAILED_AT_BYTE = 524_288_000  # e.g., stopped at 500 MB

    with tartape.open("./my_dataset") as tape:
        # Instantly jumps to the requested byte without reading earlier files
        for chunk in tape.play(start_offset=FAILED_AT_BYTE):
            network_socket.send(chunk)

    sent = bytes(network_socket.sent)
    with CoreTape.open("my_dataset.tartape") as core, TapeReader(core, "my_dataset") as reader:
        assert sent == reader.read(FAILED_AT_BYTE, core.total_size)
        big = core.locate("my_dataset/big.bin")
    assert big.body_offset < FAILED_AT_BYTE < big.body_end - 4
    assert sent[big.body_end - FAILED_AT_BYTE - 4 : big.body_end - FAILED_AT_BYTE] == b">BIG"
    after = tar_files(sent[big.end - FAILED_AT_BYTE:])
    assert after["my_dataset/reports/annual_2024.pdf"] == content(b"reports/annual_2024.pdf", 3000)


def test_readme_5_restores_one_file_from_two_volumes_with_range_requests(tmp_path, monkeypatch, capsys):
    fakeclients.reset()
    # big.bin puts the report's content across the 1 GiB boundary (see build_report_tree).
    root = build_report_tree(tmp_path, "my_dataset", big=GIB - 8192)
    monkeypatch.chdir(tmp_path)
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")
    os.rename("my_dataset", "gone")  # the catalog alone answers; only the "cloud" reads files
    # The "cloud" serves the 1 GB volumes uploaded earlier (example 2), by part number.
    uploaded = tartape.open("gone", catalog_path="my_dataset.tartape")
    for i in range(2):
        volume = uploaded.get_volume(index=i, size="1GB").open()
        fakeclients.cloud.served[f"https://my-bucket.s3.amazonaws.com/backups/part_{i}.tar"] = volume

    from fakeclients import requests

    # Open index in offline zero-disk mode (read-only safe)
    catalog = tartape.open_catalog("./my_dataset.tartape", read_only=True)

    # Locate the file within the 1 GB slicing scheme used during upload
    # (Works even if the layout was never explicitly saved in the DB!)
    location = catalog.locate("my_dataset/reports/annual_2024.pdf", tag_or_size="1GB")

    print(f"File size: {location.file_size:,} bytes")
    print(f"Spans across {len(location.fragments)} cloud volume(s)")

    # Download only the exact bytes from the cloud
    for fragment in location.fragments:
        part_url = (
            f"https://my-bucket.s3.amazonaws.com/backups/part_{fragment.volume_index}.tar"
        )

        # 'fragment.range_header' provides precomputed headers, e.g.:
        # {'Range': 'bytes=1048576-2097151'}
        response = requests.get(part_url, headers=fragment.range_header)

        with open("restored_annual_2024.pdf", "ab") as f:
            f.write(response.content)

    # Note: If your archive was uploaded as a single monolithic TAR file,
    # simply omit the size parameter: catalog.locate("my_dataset/reports/annual_2024.pdf")

    assert capsys.readouterr().out.splitlines() == ["File size: 3,000 bytes", "Spans across 2 cloud volume(s)"]
    restored = (tmp_path / "restored_annual_2024.pdf").read_bytes()
    assert restored == content(b"reports/annual_2024.pdf", 3000) == (tmp_path / "gone/reports/annual_2024.pdf").read_bytes()
    first, second = fakeclients.cloud.gets
    assert first[1].endswith(f"-{GIB - 1}") and second[1].startswith("bytes=0-")
    assert not root.exists()


def test_readme_6_reports_progress_through_an_observer(my_dataset, network_socket, capsys):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")

    from tartapefs.compat.v3 import TarObserver, TarFileStartEvent, TarFileEndEvent

    class ProgressTracker(TarObserver):
        def on_file_start(self, event: TarFileStartEvent):
            print(f"Sending: {event.entry.info.arc_path}")

        def on_file_end(self, event: TarFileEndEvent):
            print(f"Finished: {event.entry.info.arc_path}")

    with tartape.open("./my_dataset") as tape:
        for chunk in tape.play(observer=ProgressTracker()):
            network_socket.send(chunk)

    sent = bytes(network_socket.sent)
    assert sent == archive() and tar_files(sent) == tree_files(my_dataset)
    expected = []
    for info in members(sent):
        expected += [f"Sending: {info.name}", f"Finished: {info.name}"]
    assert capsys.readouterr().out.splitlines() == expected


def test_readme_7_excludes_files_and_folders(my_dataset):
    for junk in (".git/config", "build.tmp", "debug.log", "node_modules/x/index.js", "__pycache__/m.pyc",
                 "docs/notes.tmp", "docs/.DS_Store"):
        (my_dataset / junk).parent.mkdir(parents=True, exist_ok=True)
        (my_dataset / junk).write_text("leave me out")
    import tartapefs.compat.v3 as tartape

    tape = tartape.record(
        directory="./my_dataset",
        exclude=[
            ".git",
            "*.tmp",
            "*.log",
            "node_modules",
            "__pycache__",
        ],
        auto_truncate=True,  # Automatically shorten unusually long path names
        overwrite=True,  # Replace existing index if it already exists
    )

    names = [i.name for i in members(archive())]
    assert names == [t.arc_path for t in tape.inspect()]
    assert names == ["my_dataset", "my_dataset/a.txt", "my_dataset/docs", "my_dataset/docs/.DS_Store",
                     "my_dataset/docs/guide.md", "my_dataset/empty", "my_dataset/link", "my_dataset/reports",
                     "my_dataset/reports/annual_2024.pdf", "my_dataset/reports/q1.csv"]


def verify_example():
    """Example 8, verbatim but for the import."""
    import tartapefs.compat.v3 as tartape

    with tartape.open("./my_dataset") as tape:
        # Full 100% audit (default) returning a rich diagnostic report
        report = tape.verify()

        if not report:
            print(f"Audit failed! Found {report.error_count} discrepancies:")
            for error in report.errors:
                print(f"  - [{error.reason}] {error.arc_path}: {error.message}")
        else:
            print(
                report.summary()
            )  # e.g., "Verification [DEEP] PASSED: 4,200/4,200 tracks checked in 18.4ms."

        # Or run an ultra-fast Canary check (<15ms) across boundary and volatile sentinels:
        # canary_report = tape.verify(deep=False)


def test_readme_8_verify_prints_a_summary_when_nothing_changed(my_dataset, capsys):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")
    verify_example()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("verify (deep): ok; 9 of 9 members checked in ")


def test_readme_8_verify_lists_every_change(my_dataset, capsys):
    import tartapefs.compat.v3 as tartape

    tartape.record("./my_dataset")
    (my_dataset / "a.txt").write_bytes(b"longer than the 1000 bytes recorded" * 40)
    (my_dataset / "reports" / "q1.csv").unlink()
    (my_dataset / "docs" / "new.md").write_text("added after recording")
    verify_example()
    assert capsys.readouterr().out.splitlines() == [
        "Audit failed! Found 4 discrepancies:",
        "  - [size_mismatch] my_dataset/a.txt: size 1000 -> 1400 bytes",
        "  - [structural_change] my_dataset/docs: " + verify_reason(my_dataset / "docs"),
        "  - [structural_change] my_dataset/reports: " + verify_reason(my_dataset / "reports"),
        "  - [missing] my_dataset/reports/q1.csv: deleted",
    ]


def verify_reason(folder) -> str:
    """The reason tartapefs gives for a folder whose entries changed (its mtime)."""
    with CoreTape.open("my_dataset.tartape") as tape, TapeReader(tape, "my_dataset") as reader:
        return reader.check(tape.locate(f"my_dataset/{folder.name}"))


def test_readme_9_a_second_record_without_overwrite_raises_file_exists_as_tartape_does(my_dataset):
    import tartapefs.compat.v3 as tartape

    with pytest.raises(FileExistsError, match="overwrite=True"):
        # Fast metadata-only scan (default)
        tape = tartape.record("./my_dataset")

        # Or calculate file checksums upfront using SHA-256:
        tape = tartape.record("./my_dataset", checksum="sha256", auto_truncate=True)

    assert tape.checksum_algorithm is None  # the first tape, the one recorded


def test_readme_9_inspection_metrics_printed_for_a_recording_with_checksums(my_dataset, capsys):
    import tartapefs.compat.v3 as tartape

    # The second call of example 9 alone (tartape refuses it after the first, see above).
    tape = tartape.record("./my_dataset", checksum="sha256", auto_truncate=True)

    # Rich inspection metrics:
    print(f"Algorithm:       {tape.checksum_algorithm}")  # 'sha256'
    print(f"Has file hashes: {tape.has_file_checksums}")  # True
    print(f"Raw data size:   {tape.data_size:,} bytes")  # Net uncompressed payload
    print(
        f"Total TAR size:  {tape.total_size:,} bytes"
    )  # Stream size (with headers & padding)
    print(
        f"TAR overhead:    {tape.overhead_size:,} bytes"
    )  # Header + padding byte overhead

    data = archive()
    payload = sum(len(c) for c in tree_files(my_dataset).values())
    assert capsys.readouterr().out.splitlines() == [
        "Algorithm:       sha256",
        "Has file hashes: False",  # tartape: True; tartapefs keeps no per-file checksums
        f"Raw data size:   {payload:,} bytes",
        f"Total TAR size:  {len(data):,} bytes",
        f"TAR overhead:    {len(data) - payload:,} bytes",
    ]


def test_readme_auto_truncate_keeps_long_names_whole(tmp_path, monkeypatch):
    root = build_report_tree(tmp_path, "my_dataset")
    deep = root / ("d" * 150) / ("e" * 150)
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"deep")
    monkeypatch.chdir(tmp_path)
    import tartapefs.compat.v3 as tartape

    tape = tartape.record("./my_dataset", auto_truncate=True)

    name = f"my_dataset/{'d' * 150}/{'e' * 150}/{'f' * 120}"
    assert tar_files(archive())[name] == b"deep"
    assert tape.locate(name).file_size == 4
