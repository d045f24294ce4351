"""Index tier: a real tree recorded as WebDataset shards and as volumes, read back by
Python's tarfile, GNU tar and bsdtar, shard by shard and all together."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tartapefs import PlanOptions, Recording, Tape, TapeRecorder
from tartapefs.errors import UsageError
from tartapefs.plan import sample_key, volume_name
from tartapefs.tape import archives, record_or_reuse, volumes
from trees import tree_differences

pytestmark = pytest.mark.index

SHARD = 64 << 10
MTIME = 1_650_000_000


def build_sample_tree(parent: Path, name: str = "photos") -> Path:
    """Samples in folders (``key.jpg`` + ``key.cls``), names that byte order would split
    (``a``, ``a-1.jpg``, ``a.jpg``, a folder ``a.d``), a sample bigger than a shard,
    hard links across shards and within one, symlinks, an empty folder; files and
    folders carry distinct mtimes."""
    root = parent / name
    for split in ("train", "val"):
        for i in range(24):
            folder = root / split / f"part{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            body = bytes([i]) * (1000 + 997 * i)
            (folder / f"s{i:03d}.jpg").write_bytes(body)
            (folder / f"s{i:03d}.cls").write_text(str(i % 5))
            (folder / f"s{i:03d}.seg.png").write_bytes(body[: 300 + i])
    odd = root / "odd"
    odd.mkdir()
    for n in ("a", "a-1.jpg", "a.jpg", "a.txt", "b.cls"):
        (odd / n).write_bytes(n.encode() * 50)
    (odd / "a.d").mkdir()
    (odd / "a.d" / "inner.txt").write_text("inner")
    (root / "big").mkdir()
    (root / "big" / "huge.bin").write_bytes(os.urandom(3 * SHARD))
    (root / "big" / "huge.cls").write_text("7")
    os.link(root / "train" / "part0" / "s000.jpg", root / "val" / "part2" / "s023.link")  # across shards
    os.link(root / "odd" / "a.jpg", root / "odd" / "a.alias")  # within the sample of 'a'
    os.symlink("../odd/a.jpg", root / "big" / "huge.ln")
    (root / "empty").mkdir()
    stamp = MTIME
    for dirpath, dirnames, filenames in sorted(os.walk(root, topdown=False)):
        for n in filenames:
            stamp += 7
            os.utime(os.path.join(dirpath, n), (stamp, stamp), follow_symlinks=False)
        stamp += 11
        os.utime(dirpath, (stamp, stamp))
    return root


@contextlib.contextmanager
def sample_recording(tmp_path_factory, name: str, plan: PlanOptions) -> Iterator[tuple[Path, Recording]]:
    """The sample tree recorded with ``plan`` (index beside it), opened; all removed after."""
    top = tmp_path_factory.mktemp(name)
    src = build_sample_tree(top)
    TapeRecorder(str(src), index_path=str(top / "index.db"), plan=plan).commit()
    recording = Recording.open(str(top / "index.db"))
    try:
        yield src, recording
    finally:
        recording.close()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, Recording, list[bytes]]:
    with sample_recording(tmp_path_factory, "shards", PlanOptions(shard_size=SHARD)) as (src, recording):
        datas = []
        for tape in recording.tapes():
            with tape.reader() as reader:
                datas.append(reader.read(0, tape.total_size))
        yield src, recording, datas


def test_shards_are_named_sized_and_listed_with_their_samples(sharded):
    src, recording, datas = sharded
    tapes = recording.tapes()
    assert len(tapes) > 3
    assert [t.name for t in tapes] == [f"photos-{i:06d}.tar" for i in range(len(tapes))]
    for tape, data in zip(tapes, datas):
        assert len(data) == tape.total_size
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = tf.getmembers()
        assert len(members) == tape.member_count
        if tape.total_size > SHARD:  # only a sample bigger than a shard may make one
            keys = {(os.path.dirname(m.name), sample_key(os.path.basename(m.name).encode()))
                    for m in members if not m.isdir()}
            assert len(keys) == 1, keys
    assert len({t.fingerprint for t in tapes}) == len(tapes)


@pytest.mark.parametrize("tool", ["tar", "bsdtar"])
def test_every_shard_lists_and_extracts_alone(sharded, tool, tmp_path):
    _, recording, datas = sharded
    for tape, data in zip(recording.tapes(), datas):
        archive = tmp_path / tape.name
        archive.write_bytes(data)
        listed = subprocess.run([tool, "-tf", str(archive)], capture_output=True)
        assert listed.returncode == 0 and not listed.stderr, listed.stderr
        assert len(listed.stdout.splitlines()) == tape.member_count
        alone = tmp_path / f"alone-{tape.number}"
        alone.mkdir()
        done = subprocess.run([tool, "-xf", str(archive), "-C", str(alone)], capture_output=True)
        assert done.returncode == 0 and not done.stderr, (tape.name, done.stderr)


@pytest.mark.parametrize("tool", ["tar", "bsdtar", "tarfile"])
def test_all_shards_extracted_in_order_give_back_the_source(sharded, tool, tmp_path):
    src, recording, datas = sharded
    out = tmp_path / "out"
    out.mkdir()
    for tape, data in zip(recording.tapes(), datas):
        archive = tmp_path / tape.name
        archive.write_bytes(data)
        if tool == "tarfile":
            with tarfile.open(archive) as tf:
                tf.extractall(out, filter="fully_trusted")
        else:
            done = subprocess.run([tool, "-xpf", str(archive), "-C", str(out)], capture_output=True)
            assert done.returncode == 0, done.stderr
    # contents, modes, mtimes of files and folders, symlinks; hard links are
    # compared within a shard below (across shards they are files on purpose)
    # (tarfile leaves symlinks with the time of their extraction)
    problems = [p for p in tree_differences(src, out / "photos", symlink_mtimes=tool != "tarfile")
                if not p.startswith("hard links")]
    if tool == "bsdtar":
        # bsdtar (libarchive 3.6) leaves a folder that already exists with the time its
        # extraction gave it, though the shard carries the folder: seen, not ours to fix.
        spanning = {os.fsencode(m.name[len("photos/"):]).rstrip(b"/") for t in recording.tapes()[1:]
                    for m in t.members() if m.kind == "dir"}
        problems = [p for p in problems if not any(p.startswith(f"{rel!r}: mtime") for rel in spanning)]
    assert problems == []


def test_a_hard_link_across_shards_is_a_file_and_within_a_shard_a_link(sharded):
    _, recording, datas = sharded
    kinds = {}
    for data in datas:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf.getmembers():
                kinds.setdefault(m.name, set()).add("link" if m.islnk() else "file" if m.isfile() else "other")
    assert kinds["photos/val/part2/s023.link"] == {"file"}
    assert kinds["photos/odd/a.alias"] == {"file"}  # first in the walk: a.alias < a.jpg
    assert kinds["photos/odd/a.jpg"] == {"link"}


def test_samples_are_consecutive_where_byte_order_would_split_them(sharded):
    _, recording, datas = sharded
    names = []
    for data in datas:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names += [m.name for m in tf.getmembers() if m.name.startswith("photos/odd/") and not m.isdir()]
    assert names == ["photos/odd/a", "photos/odd/a.alias", "photos/odd/a.jpg", "photos/odd/a.txt",
                     "photos/odd/a.d/inner.txt", "photos/odd/a-1.jpg", "photos/odd/b.cls"]


def test_each_shard_plays_as_events_and_resumes_anywhere(sharded):
    _, recording, datas = sharded
    for tape, data in zip(recording.tapes(), datas):
        for start in (0, tape.total_size // 3, tape.total_size - 700):
            played = b"".join(e.data for e in tape.player().play(start_offset=start) if e.type == "file_data")
            assert played == data[start:]


def test_recording_twice_gives_the_same_shards(sharded, tmp_path):
    src, recording, _ = sharded
    again = tmp_path / "again.db"
    TapeRecorder(str(src), index_path=str(again), plan=PlanOptions(shard_size=SHARD)).commit()
    with Recording.open(str(again)) as other:
        assert [(t.name, t.fingerprint, t.total_size) for t in other.tapes()] == \
               [(t.name, t.fingerprint, t.total_size) for t in recording.tapes()]


def test_locate_names_the_shard_of_a_member_and_its_range(sharded):
    _, recording, datas = sharded
    [(tape, m)] = recording.locate("photos/big/huge.bin")
    assert datas[tape.number][m.body_offset:m.body_end] == (Path(recording.source_root) / "big/huge.bin").read_bytes()
    folders = recording.locate("photos/")
    assert [t.number for t, _ in folders] == list(range(len(recording.tapes())))


def test_the_one_tape_api_refuses_a_sharded_recording_in_one_line(sharded):
    _, recording, _ = sharded
    with pytest.raises(UsageError, match=r"recorded as \d+ shards .*Recording.open") as err:
        Tape.open(recording.index_path)
    assert "\n" not in str(err.value)


def test_the_shard_list_names_every_shard_and_its_samples(sharded):
    import json

    _, recording, _ = sharded
    files = archives([recording])
    assert [f.name for f in files][-1] == "photos.wids.json"
    doc = json.loads(files[-1].reader().read(0, files[-1].total_size))
    assert [s["url"] for s in doc["shardlist"]] == [t.name for t in recording.tapes()]
    assert [s["filesize"] for s in doc["shardlist"]] == [t.total_size for t in recording.tapes()]
    assert sum(s["nsamples"] for s in doc["shardlist"]) >= 24 * 2 + 1


# -- volumes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    top = tmp_path_factory.mktemp("volumes")
    src = build_sample_tree(top, "data")
    recording = record_or_reuse(str(src), str(top / "index.db"))
    [tape] = recording.tapes()
    with tape.reader() as reader:
        data = reader.read(0, tape.total_size)
    yield tape, data
    recording.close()
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("split", [10 << 10, 100_000, 1 << 40])
def test_volumes_concatenated_are_the_archive(whole, split):
    tape, data = whole
    parts = volumes(tape, split)
    assert [v.name for v in parts] == [volume_name(tape.name, i, len(parts)) for i in range(len(parts))]
    assert all(v.total_size == split for v in parts[:-1]) and 0 < parts[-1].total_size <= split
    joined = b""
    for v in parts:
        with v.reader() as reader:
            piece = reader.read(0, v.total_size + 5)
            assert reader.read(v.total_size, 10) == b""
        assert len(piece) == v.total_size
        joined += piece
    assert joined == data
    assert len({v.fingerprint for v in parts}) == len(parts)


@pytest.mark.parametrize("tool", ["tar", "bsdtar", "tarfile"])
def test_concatenated_volumes_read_as_the_archive_with_real_readers(whole, tool, tmp_path):
    tape, data = whole
    joined = tmp_path / "joined.tar"
    with open(joined, "wb") as out:
        for v in volumes(tape, 30_000):
            with v.reader() as reader:
                out.write(reader.read(0, v.total_size))
    if tool == "tarfile":
        with tarfile.open(joined) as tf:
            assert len(tf.getmembers()) == tape.member_count
    else:
        listed = subprocess.run([tool, "-tf", str(joined)], capture_output=True)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == tape.member_count


def test_names_collide_in_one_line(whole, sharded):
    tape, _ = whole
    with pytest.raises(UsageError, match="--name"):
        archives([sharded[1]], name="x.tar")
    with pytest.raises(UsageError, match="two archives would have this name"):
        archives([tape.recording, tape.recording])


def test_shards_with_split_are_each_cut_into_volumes_and_list_no_shard_list(sharded):
    _, recording, datas = sharded
    files = archives([recording], split=20_000)
    assert not [f for f in files if f.name.endswith(".wids.json")]
    for tape, data in zip(recording.tapes(), datas):
        parts = [f for f in files if f.name.startswith(tape.name + ".")]
        assert [p.name for p in parts] == [volume_name(tape.name, i, len(parts)) for i in range(len(parts))]
        joined = b""
        for part in parts:
            with part.reader() as reader:
                joined += reader.read(0, part.total_size)
        assert joined == data
