"""``tartape`` with several archives: shards, volumes and several folders, written
with ``stream -o DIR/``, listed, located; bad input refused in one line with
nothing written."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from test_cli import assert_user_error, ok, tartape
from test_shards import build_sample_tree
from tartapefs import Recording

pytestmark = pytest.mark.index


@pytest.fixture
def photos(tmp_path) -> Path:
    return build_sample_tree(tmp_path)


def test_stream_writes_every_shard_and_the_shard_list_into_a_folder(photos, tmp_path):
    out = tmp_path / "out"
    ok("stream", photos, "--shard-size", "64KiB", "-o", f"{out}/")
    with Recording.discover(str(photos)) as recording:
        tapes = recording.tapes()
        assert len(tapes) > 3
        written = sorted(os.listdir(out))
        assert written == sorted([t.name for t in tapes] + ["photos.wids.json"])  # no .part left
        for tape in tapes:
            with tape.reader() as reader:
                assert (out / tape.name).read_bytes() == reader.read(0, tape.total_size)
    doc = json.loads((out / "photos.wids.json").read_text())
    assert [s["url"] for s in doc["shardlist"]] == [t.name for t in tapes]
    # the same options again reuse the recording; other options record again
    ok("stream", photos, "--shard-size", "64KiB", "-o", f"{out}/")
    ok("stream", photos, "--shard-members", "10", "-o", f"{tmp_path}/other/")
    with Recording.discover(str(photos)) as again:
        assert again.plan.shard_members == 10 and max(t.member_count for t in again.tapes()) <= 10


def test_ls_names_the_shard_of_each_member_and_locate_its_range(photos, tmp_path):
    out = tmp_path / "out"
    ok("stream", photos, "--shard-size", "64KiB", "-o", f"{out}/")
    lines = ok("ls", photos).decode().splitlines()
    shard_of = {}
    for line in lines:
        archive, offset, size, name = line.split("\t")
        shard_of.setdefault(name, archive)
    assert shard_of["photos/big/huge.bin"].startswith("photos-0")
    located = dict(line.split("\t", 1) for line in ok("locate", photos, "photos/big/huge.bin").decode().splitlines())
    assert located["archive"] == shard_of["photos/big/huge.bin"]
    first, last = map(int, located["range"].split("=")[1].split("-"))
    data = (out / located["archive"]).read_bytes()[first:last + 1]
    assert data == (photos / "big" / "huge.bin").read_bytes()


def test_several_folders_stream_one_archive_each_named_after_its_folder(tmp_path):
    a, b = build_sample_tree(tmp_path, "photos"), build_sample_tree(tmp_path / "x", "scans")
    out = tmp_path / "out"
    ok("stream", a, b, "-o", f"{out}/")
    assert sorted(os.listdir(out)) == ["photos.tar", "scans.tar"]
    for name, src in (("photos.tar", a), ("scans.tar", b)):
        with tarfile.open(out / name) as tf:
            assert tf.getnames()[0] == src.name
        assert (a / ".tartape" / "index.db").exists() and (b / ".tartape" / "index.db").exists()
    archives = {line.split("\t")[0] for line in ok("ls", a, b).decode().splitlines()}
    assert archives == {"photos.tar", "scans.tar"}
    info = ok("info", a, b).decode()
    assert info.count("index\t") == 2


def test_split_volumes_are_named_for_ratarmount_and_join_into_the_archive(photos, tmp_path):
    whole = ok("stream", photos)
    out = tmp_path / "vol"
    ok("stream", photos, "--split", "100000", "-o", f"{out}/")
    names = sorted(os.listdir(out))
    count = -(-len(whole) // 100000)
    assert names == [f"dataset.tar.{i:03d}" for i in range(1, count + 1)]
    assert b"".join((out / n).read_bytes() for n in names) == whole
    one = ok("stream", photos, "--split", "100000", "--archive", "dataset.tar.002")
    assert one == whole[100000:200000]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        assert tf.getnames()


def bad(tmp_path: Path, photos: Path) -> dict[str, list]:
    twin = tmp_path / "other" / "photos"
    twin.mkdir(parents=True)
    (tmp_path / "solo").mkdir()
    return {
        "tiny shard": ["stream", photos, "--shard-size", "10000", "-o"],
        "tiny split": ["stream", photos, "--split", "9KiB", "-o"],
        "no size": ["stream", photos, "--shard-size", "1.5G", "-o"],
        "bad unit": ["stream", photos, "--split", "3GB", "-o"],
        "not a number": ["stream", photos, "--shard-members", "many", "-o"],
        "shards and --name": ["stream", photos, "--shard-size", "1G", "--name", "x.tar", "-o"],
        "same name": ["stream", photos, twin, "-o"],
        "same folder": ["stream", photos, f"{photos}/", "-o"],
        "one inside another": ["stream", photos, photos / "odd", "-o"],
        "--index with two": ["stream", photos, tmp_path / "solo", "--index", tmp_path / "i.db", "-o"],
        "several to stdout": ["stream", photos, tmp_path / "solo"],
    }


@pytest.mark.parametrize("case", ["tiny shard", "tiny split", "no size", "bad unit", "not a number",
                                  "shards and --name", "same name", "same folder", "one inside another",
                                  "--index with two", "several to stdout"])
def test_bad_input_is_one_line_and_writes_nothing(photos, tmp_path, case):
    argv = bad(tmp_path, photos)[case]
    out = tmp_path / "out"
    if argv[-1] == "-o":
        argv = [*argv, f"{out}/"]
    proc = tartape(*argv)
    assert_user_error(proc)
    assert not out.exists()
    assert not (photos / ".tartape").exists() and not (tmp_path / "i.db").exists()


def test_verify_checks_a_sharded_recording_member_by_member(photos):
    ok("record", photos, "--shard-size", "64KiB")
    assert b"all as recorded" in ok("verify", photos)
    (photos / "odd" / "b.cls").write_text("changed")
    proc = tartape("verify", photos)
    assert proc.returncode == 1
    assert [line.split(b"\t")[1] for line in proc.stdout.splitlines()] == [b"photos/odd/b.cls"]
