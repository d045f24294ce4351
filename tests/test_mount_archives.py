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
            assert (st.st_size, st.st_mtime, st.st_ino) == (tape.total_size, tape.mtime, stable_inode(tape.name, tape))
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


# -- real peers: webdataset, wids, ratarmount (each in its own virtualenv, see scripts/lib.sh) ---


def peer_python(name: str) -> Path:
    python = Path(__file__).resolve().parent.parent / f".venv-{name}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} missing: scripts/test installs the test peers (scripts/lib.sh tt_peers_setup)")
    return python


def webdataset_samples(datas: list[bytes]) -> list[list]:
    """The samples webdataset's rules give (regular members whose name has a key and
    an extension, grouped while the key repeats), from the shards' bytes via tarfile."""
    import hashlib
    import io
    import re
    import tarfile

    samples: list[list] = []
    for data in datas:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for info in tf.getmembers():
                match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", info.name)
                if not info.isreg() or not match:
                    continue
                key, ext = match.groups()
                if not samples or samples[-1][0] != key:
                    samples.append([key, {}])
                samples[-1][1][ext] = hashlib.sha256(tf.extractfile(info).read()).hexdigest()
    return samples


def test_webdataset_reads_every_sample_and_wids_reads_them_at_random(mounts, photos, tmp_path):
    python = peer_python("loaders")
    m = mounts.foreground(photos, None, "--shard-size", str(SHARD), name="photos.wids.json")
    with Recording.discover(str(photos)) as recording:
        datas = []
        for tape in recording.tapes():
            with tape.reader() as reader:
                datas.append(reader.read(0, tape.total_size))
        nsamples = sum(t.nsamples for t in recording.tapes())
    out = tmp_path / "read.json"
    done = subprocess.run([python, Path(__file__).parent / "peers" / "read_shards.py", m.mnt, "photos", "7", out,
                           tmp_path / "wids-cache"],
                          capture_output=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=600)
    try:  # wids makes this empty folder when imported (a default argument), whatever cache is used
        os.rmdir("/tmp/_wids_cache")
    except OSError:
        pass
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    read = json.loads(out.read_text())
    expected = webdataset_samples(datas)
    assert len(expected) > 50 and read["loader"] == expected
    assert read["wids_len"] == nsamples == len(read["wids"])
    # wids keys a member without a dot in its name differently; every other sample is the loader's
    by_key = {key: files for key, files in expected}
    random_order = [key for key, _ in read["wids"]]
    assert random_order != sorted(random_order)
    for key, files in read["wids"]:
        if key in by_key:
            assert files == by_key[key], key
    assert {k for k, _ in read["wids"]} >= {k for k in by_key if "." not in k.rsplit("/", 1)[-1]} - {"photos/odd/a"}


def test_ratarmount_mounts_the_split_volumes_as_one_archive(mounts, photos, tmp_path):
    python = peer_python("ratarmount")
    m = mounts.foreground(photos, None, "--split", "100000", name="dataset.tar.001")
    rmnt = tmp_path / "ratarmount"
    rmnt.mkdir()
    ratarmount = python.parent / "ratarmount"
    env = {**os.environ, "HOME": str(tmp_path)}  # its index goes to ~/.ratarmount: the mount is read-only
    try:
        done = subprocess.run([ratarmount, m.mnt / "dataset.tar.001", rmnt], capture_output=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        # ratarmount shows a hard link as a symlink to its first path: compare names and contents
        source = {p.relative_to(photos) for p in photos.rglob("*") if ".tartape" not in p.parts}
        assert {p.relative_to(rmnt / "photos") for p in (rmnt / "photos").rglob("*")} == source
        files = [rel for rel in source if (photos / rel).is_file() and not (photos / rel).is_symlink()]
        assert len(files) > 100
        for rel in files:
            if (rmnt / "photos" / rel).is_symlink():
                assert (photos / rel).stat().st_nlink > 1, rel  # a hard link member
                continue
            assert (rmnt / "photos" / rel).read_bytes() == (photos / rel).read_bytes(), rel
    finally:
        subprocess.run(["fusermount3", "-u", str(rmnt)], capture_output=True)
