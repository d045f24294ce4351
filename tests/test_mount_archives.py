"""Real mounts serving several archives: WebDataset shards with their wids shard
list, split volumes, several folders; read by GNU tar and cp through FUSE."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, run_mount_cli
from test_shards import SHARD, build_sample_tree
from tartapefs import Recording
from tartapefs.fusefs import stable_inode
from trees import tree_differences

pytestmark = NEEDS_MOUNT


@pytest.fixture
def photos(tmp_path) -> Path:
    return build_sample_tree(tmp_path)


def test_shards_and_their_shard_list_are_served_and_extract_to_the_source(mounts, photos, tmp_path):
    m = mounts.foreground(photos, None, "--shard-size", str(SHARD), name="photos.wids.json")
    with Recording.discover(str(photos)) as recording:
        tapes = recording.tapes()
        names = sorted(os.listdir(m.mnt))
        assert names == sorted([t.name for t in tapes] + ["photos.wids.json"])
        out = tmp_path / "out"
        out.mkdir()
        for tape in tapes:
            path = m.mnt / tape.name
            st = os.stat(path)
            assert (st.st_size, st.st_mtime, st.st_ino) == (tape.total_size, tape.mtime, stable_inode(tape.name))
            with tape.reader() as reader:
                assert path.read_bytes() == reader.read(0, tape.total_size)
            done = subprocess.run(["tar", "-xpf", str(path), "-C", str(out)], capture_output=True)
            assert done.returncode == 0, done.stderr
    problems = [p for p in tree_differences(photos, out / "photos") if not p.startswith("hard links")]
    assert problems == []
    doc = json.loads((m.mnt / "photos.wids.json").read_bytes())
    assert [(s["url"], s["filesize"]) for s in doc["shardlist"]] == [(t.name, t.total_size) for t in tapes]


def test_volumes_are_served_and_join_into_the_unsplit_archive(mounts, photos, tmp_path):
    whole = mounts.foreground(photos)
    data = whole.file.read_bytes()
    m = mounts.foreground(photos, None, "--split", "100000", name="dataset.tar.001")
    names = sorted(os.listdir(m.mnt))
    assert names == [f"dataset.tar.{i:03d}" for i in range(1, len(names) + 1)]
    assert all(os.stat(m.mnt / n).st_size == 100000 for n in names[:-1])
    assert b"".join((m.mnt / n).read_bytes() for n in names) == data


def test_several_folders_are_one_archive_each(mounts, tmp_path):
    a = build_sample_tree(tmp_path, "photos")
    b = build_sample_tree(tmp_path / "x", "scans")
    m = mounts.foreground(a, None, name="photos.tar", more=(b,))
    assert sorted(os.listdir(m.mnt)) == ["photos.tar", "scans.tar"]
    for name, src in (("photos.tar", a), ("scans.tar", b)):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        done = subprocess.run(["tar", "-xpf", str(m.mnt / name), "-C", str(out)], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert tree_differences(src, out / src.name) == []


@pytest.mark.parametrize("case,reason", [
    (["--shard-size", "1G", "--name", "x.tar"], "--name"),
    (["--shard-size", "9K"], "below the smallest part"),
    (["--split", "lots"], "not a size"),
    (["TWIN"], "two archives would be photos.tar"),
])
def test_bad_archive_options_are_one_line_and_mount_nothing(photos, tmp_path, case, reason):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    twin = tmp_path / "twin" / "photos"
    twin.mkdir(parents=True)
    if case == ["TWIN"]:
        done = run_mount_cli(photos, twin, mnt)
    else:
        done = run_mount_cli(photos, mnt, *case)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and reason in lines[0], done.stderr
    assert os.listdir(mnt) == [] and not (photos / ".tartape").exists()
