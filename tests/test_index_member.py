"""Index tier: real trees recorded with --index-member and --ratarmount-index. The index member
is read back by GNU tar, bsdtar and Python's tarfile, its CSV agrees with tarfile's offsets for
every member, `tartape extract` takes members out of a copy, ratarmount's own scan writes the
rows of the index served beside each archive, and shards each carry their own of both."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agekit import age_decrypt, keygen
from mountutil import DEADLINE_S, TARTAPE
from tartapefs import PlanOptions, Recording, TapeRecorder
from tartapefs import format as fmt
from tartapefs.cli import main
from tartapefs.errors import IndexCorruptError, UsageError
from tartapefs.index import INDEX_MEMBER, PART, RATARMOUNT_INDEX, seal
from tartapefs.tape import archives
from test_cli import assert_user_error, ok, tartape
from test_readers import unexpected_stderr
from test_shards import SHARD, sample_recording
from trees import expected_names, tree_differences

pytestmark = pytest.mark.index

RATARMOUNT = Path(sys.executable).parent / "ratarmount"
needs_ratarmount = pytest.mark.skipif(not RATARMOUNT.exists(),
                                      reason="ratarmount is not installed (the test extra installs it)")
BOTH = PlanOptions(index_member=True, ratarmount_index=True)


def read_whole(item) -> bytes:
    with item.reader() as reader:
        return reader.read(0, item.total_size)


def csv_rows(data: bytes) -> list[list[str]]:
    """The CSV as Python's csv module reads it: header row first."""
    text = io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")
    return list(csv.reader(text))


def tarfile_rows(data: bytes) -> list[list[str]]:
    """What the CSV must say, from Python's tarfile: every member but the index member."""
    kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}
    rows = []
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
        for m in members[:-1]:
            kind = kinds.get(m.type, "file")
            mtime = m.pax_headers.get("mtime") or str(int(m.mtime))
            rows.append([m.name + ("/" if kind == "dir" else ""), str(m.size), str(m.offset), str(m.offset_data),
                         kind, mtime])
        index = members[-1]
        assert index.isfile() and index.name.endswith(".tarindex.csv")
        assert (index.mode, index.uid, index.gid) == (0o644, 0, 0)
        content = tf.extractfile(index).read()
    return rows, content


def ratarmount_scan(archive: Path, index: Path) -> list[tuple]:
    """The ``files`` rows ratarmount writes when it scans ``archive`` itself."""
    done = subprocess.run([str(RATARMOUNT), "--no-mount", "--index-file", str(index), str(archive)],
                          capture_output=True, text=True, timeout=DEADLINE_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return sidecar_rows(index)


def sidecar_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute('SELECT * FROM "files"'), key=repr)


@pytest.fixture(scope="module")
def recorded(hard_tree, tmp_path_factory):
    """The hard tree recorded with both options (index outside the tree), opened."""
    top = tmp_path_factory.mktemp("index-member")
    TapeRecorder(str(hard_tree.root), index_path=str(top / "index.db"), plan=BOTH).commit()
    recording = Recording.open(str(top / "index.db"))
    tape = recording.tapes()[0]
    yield hard_tree, recording, tape, read_whole(tape), top
    recording.close()
    shutil.rmtree(top, ignore_errors=True)


def test_the_index_member_is_the_last_member_and_lists_every_other_as_tarfile_reads_it(recorded):
    hard_tree, recording, tape, data, _ = recorded
    rows, content = tarfile_rows(data)
    assert csv_rows(content) == [["name", "size", "header_offset", "body_offset", "type", "mtime"], *rows]
    members = list(tape.members())
    index = members[-1]
    assert index.generated and index.name == b"data/data.tarindex.csv"
    assert tape.index_offset == index.offset and index.end + 1024 == tape.total_size == len(data)
    assert len(rows) == len(members) - 1 == len(expected_names(hard_tree.root))
    assert index.mtime == max(m.mtime for m in members[:-1])  # the newest member's, never the clock


@pytest.mark.parametrize("tar", ["tar", "bsdtar"])
def test_gnu_tar_and_bsdtar_extract_the_tree_and_the_index_member(recorded, tar, tmp_path):
    hard_tree, _, _, data, _ = recorded
    archive = tmp_path / "dataset.tar"
    archive.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    options = ["--warning=no-timestamp"] if tar == "tar" else []
    done = subprocess.run([tar, "-xpf", str(archive), "-C", str(out), *options], capture_output=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 0 and unexpected_stderr(done) == [], done.stderr
    assert tree_differences(hard_tree.root, out / "data") == ["unexpected b'data.tarindex.csv'"]
    assert (out / "data" / "data.tarindex.csv").read_bytes() == tarfile_rows(data)[1]


def test_every_range_and_the_event_stream_hold_the_index_member(recorded):
    _, _, tape, data, _ = recorded
    index = list(tape.members())[-1]
    with tape.reader() as reader:
        for o in (index.offset - 1, index.offset, index.offset + 100, index.body_offset, index.body_end - 1,
                  index.end - 1, tape.total_size - 1025):
            for n in (1, 511, 512, 513, PART + 3, tape.total_size):
                assert reader.read(o, n) == data[o : o + n], (o, n)
        assert reader.read(index.offset - 700, 1000) == data[index.offset - 700 : index.offset + 300]
        assert reader.served[-1] == index
    events = [e for e in tape.player().play(start_offset=index.offset - 3) if e.type == "file_end"]
    assert events[-1].entry == index
    assert events[-1].metadata.md5sum == hashlib.md5(data[index.body_offset : index.body_end]).hexdigest()


def test_the_fingerprint_and_verify_cover_the_index_member(recorded, hard_tree, tmp_path, capsys):
    _, recording, tape, data, top = recorded
    TapeRecorder(str(hard_tree.root), index_path=str(tmp_path / "plain.db")).commit()
    with Recording.open(str(tmp_path / "plain.db")) as plain:
        assert plain.fingerprint != recording.fingerprint
        assert plain.tapes()[0].total_size < tape.total_size
    assert main(["verify", str(hard_tree.root), "--index", str(top / "index.db")]) == 0
    assert capsys.readouterr().out == f"ok: {tape.member_count} members, all as recorded\n"  # the index member too


def test_a_generated_file_that_is_damaged_or_forged_is_refused_when_opened(recorded, tmp_path):
    _, _, tape, _, top = recorded
    cases = {
        "short": "UPDATE generated SET data = substr(data, 1, length(data) - 1) WHERE role = 'index_member' "
                 "AND part = (SELECT max(part) FROM generated WHERE role = 'index_member')",
        "missing": "DELETE FROM generated WHERE role = 'index_member'",
        "a part out of order": "UPDATE generated SET part = part + 1 WHERE role = 'ratarmount_index'",
        "not generated": "UPDATE members SET kind = 0 WHERE kind = 100",
        "moved": f"UPDATE tapes SET index_member = {tape.index_offset - 512}",
    }
    for what, sql in cases.items():
        path = tmp_path / f"{what}.db"
        shutil.copy(top / "index.db", path)
        with sqlite3.connect(path) as db:
            db.execute(sql)
        db.close()
        seal(str(path))  # a forged index carries a valid checksum
        with pytest.raises(IndexCorruptError, match="damaged index") as caught:
            Recording.open(str(path))
        assert "\n" not in str(caught.value), what


def test_ratarmount_own_scan_writes_the_rows_of_the_index_served_beside_the_archive(recorded, tmp_path):
    if not RATARMOUNT.exists():
        pytest.skip("ratarmount is not installed (the test extra installs it)")
    _, recording, tape, data, _ = recorded
    files = {f.name: f for f in archives([recording])}
    assert sorted(files) == ["dataset.tar", "dataset.tar.index.sqlite"]
    sidecar = files["dataset.tar.index.sqlite"]
    assert (sidecar.total_size, sidecar.mtime) == (tape.generated_file(RATARMOUNT_INDEX).size, tape.mtime)
    (tmp_path / "dataset.tar").write_bytes(data)
    (tmp_path / "ours.sqlite").write_bytes(read_whole(sidecar))
    assert sidecar_rows(tmp_path / "ours.sqlite") == ratarmount_scan(tmp_path / "dataset.tar", tmp_path / "theirs")


def test_extract_from_a_copy_gives_the_source_files_with_mode_and_mtime(recorded, tmp_path, capsys):
    hard_tree, _, tape, data, _ = recorded
    (tmp_path / "dataset.tar").write_bytes(data)
    wanted = [b"sizes/size_513", b"names/" + b"c" * 200, b"times/after_2242", b"names/\xff\xfe"]
    names = [os.fsdecode(b"data/" + w) for w in wanted]
    assert main(["extract", str(tmp_path / "dataset.tar"), *names, "-C", str(tmp_path / "out")]) == 1
    assert "cannot open the folder" in capsys.readouterr().err  # -C must exist
    (tmp_path / "out").mkdir()
    assert main(["extract", str(tmp_path / "dataset.tar"), *names, "-C", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""  # found through the index member: no warning, no scan
    for rel in wanted:
        src, out = hard_tree.root / os.fsdecode(rel), tmp_path / "out" / "data" / os.fsdecode(rel)
        a, b = os.lstat(src), os.lstat(out)
        assert out.read_bytes() == src.read_bytes(), rel
        # The mtime the archive carries: whole seconds in ustar, exact where a PAX header is.
        m = tape.locate(b"data/" + rel)
        mtime_ns = a.st_mtime_ns if m.header_size > fmt.BLOCK else a.st_mtime_ns // 10**9 * 10**9
        assert (stat.S_IMODE(a.st_mode), mtime_ns) == (stat.S_IMODE(b.st_mode), b.st_mtime_ns), rel


def test_tartape_record_and_stream_take_the_options_and_stream_writes_the_sidecar(tmp_path, small_tree):
    done = subprocess.run([*TARTAPE, "record", str(small_tree), "--index-member", "--ratarmount-index"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*TARTAPE, "info", str(small_tree)], capture_output=True, text=True)
    assert "an index member in each archive, ratarmount's index beside each archive" in done.stdout
    out = tmp_path / "out"
    done = subprocess.run([*TARTAPE, "stream", str(small_tree), "-o", f"{out}/"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["dataset.tar", "dataset.tar.index.sqlite"]
    one = subprocess.run([*TARTAPE, "stream", str(small_tree)], capture_output=True)
    assert one.stdout == (out / "dataset.tar").read_bytes()  # one output: the archive alone
    with tarfile.open(out / "dataset.tar") as tf:
        assert tf.getnames()[-1] == "data/data.tarindex.csv"
    # Options other than recorded: recorded again, exactly as asked (no index member now).
    done = subprocess.run([*TARTAPE, "stream", str(small_tree), "--shard-members", "100", "-o", f"{out}2/"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(f"{out}2")) == ["data-000000.tar", "data.wids.json"]


@pytest.mark.parametrize("name,folder,options", [
    ("data.tarindex.csv", False, []),
    ("data.tarindex.csv", True, []),
    ("data-000003.tarindex.csv", False, ["--shard-members", "5"]),
])
def test_a_source_entry_named_like_an_index_member_is_refused_in_one_line(tmp_path, small_tree, capsys, name,
                                                                          folder, options):
    target = small_tree / name
    if folder:
        target.mkdir()
    else:
        target.write_bytes(b"mine")
    index = tmp_path / "index.db"
    assert main(["record", str(small_tree), "--index", str(index), *options]) == 0
    before = index.read_bytes()
    capsys.readouterr()
    assert main(["record", str(small_tree), "--index", str(index), "--index-member", *options]) == 1
    err = capsys.readouterr().err
    assert err == (f"tartape: data/{name}{'/' if folder else ''}: an entry of the source folder has "
                   "the name of an index member; rename it, or record without --index-member\n")
    assert index.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["data", "index.db"]


# -- shards ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    plan = PlanOptions(shard_size=SHARD, index_member=True, ratarmount_index=True)
    with sample_recording(tmp_path_factory, "index-member-shards", plan) as (src, recording):
        yield src, recording


def test_each_shard_ends_with_its_own_index_member_and_stays_within_the_size(shards):
    src, recording = shards
    tapes = recording.tapes()
    assert len(tapes) > 3
    for tape in tapes:
        data = read_whole(tape)
        rows, content = tarfile_rows(data)
        assert csv_rows(content)[1:] == rows, tape.name
        members = list(tape.members())
        stem = tape.name.removesuffix(".tar")
        assert members[-1].name == f"photos/{stem}.tarindex.csv".encode()
        names = [m.name for m in members]
        if tape.total_size > SHARD:  # only a sample bigger than a shard makes one
            assert b"photos/big/huge.bin" in names
    # Extracted in order, the shards give back the source and one index member each.
    assert sum(t.member_count for t in tapes) == sum(1 for _ in recording.members())


@needs_ratarmount
def test_each_shard_has_its_own_ratarmount_index_with_ratarmount_own_rows(shards, tmp_path):
    _, recording = shards
    files = {f.name: f for f in archives([recording])}
    tapes = recording.tapes()
    assert sorted(files) == sorted([t.name for t in tapes] + [t.name + ".index.sqlite" for t in tapes]
                                   + ["photos.wids.json"])
    for tape in tapes[:3] + tapes[-1:]:
        (tmp_path / tape.name).write_bytes(read_whole(tape))
        ours = tmp_path / f"{tape.name}.ours"
        ours.write_bytes(read_whole(files[tape.name + ".index.sqlite"]))
        assert sidecar_rows(ours) == ratarmount_scan(tmp_path / tape.name, tmp_path / f"{tape.name}.theirs")


def test_volumes_get_no_ratarmount_index(shards):
    _, recording = shards
    names = [f.name for f in archives([recording], split=20000)]
    assert names and not any(n.endswith(".index.sqlite") or n.endswith(".wids.json") for n in names)


def test_an_index_member_name_needs_the_option(tmp_path):
    # Without --index-member such a name is an ordinary file, recorded as any other.
    src = tmp_path / "data"
    src.mkdir()
    (src / "data.tarindex.csv").write_bytes(b"not ours")
    TapeRecorder(str(src), index_path=str(tmp_path / "i.db")).commit()
    with Recording.open(str(tmp_path / "i.db")) as r:
        assert [m.generated for m in r.members()] == [False, False]
    with pytest.raises(UsageError, match="the name of an index member"):
        TapeRecorder(str(src), index_path=str(tmp_path / "i.db"), plan=BOTH).commit()


def test_the_index_member_of_a_member_less_tape_is_its_header_row(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    TapeRecorder(str(src), index_path=str(tmp_path / "i.db"), prefix="", plan=BOTH).commit()
    with Recording.open(str(tmp_path / "i.db")) as r:
        tape = r.tapes()[0]
        data = read_whole(tape)
        assert [m.name for m in tape.members()] == [b"data.tarindex.csv"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert tf.extractfile("data.tarindex.csv").read() == b"name,size,header_offset,body_offset,type,mtime\r\n"
        assert tape.generated_file(INDEX_MEMBER).size == 48 and len(data) == 2 * fmt.BLOCK + len(fmt.FOOTER)


# -- with encryption ------------------------------------------------------------------------------


def test_the_index_member_is_encrypted_with_the_rest_and_ratarmount_index_is_refused(small_tree, tmp_path):
    key = keygen(tmp_path)
    sealed = ok("stream", small_tree, "--encrypt-to", key.public, "--index-member")
    done = age_decrypt(sealed, key)
    assert done.returncode == 0, done.stderr
    rows, content = tarfile_rows(done.stdout)
    assert csv_rows(content)[1:] == rows and b"tarindex" not in sealed
    # ratarmount's index would list in plain what the .age file holds: refused, nothing written.
    before = sorted(os.listdir(small_tree / ".tartape"))
    for args in (["record", small_tree, "--encrypt-to", key.public, "--ratarmount-index"],
                 ["stream", small_tree, "--ratarmount-index"]):  # recorded again: keeps the recipients
        proc = tartape(*args)
        assert_user_error(proc)
        assert b"--ratarmount-index: not with --encrypt-to" in proc.stderr
    assert sorted(os.listdir(small_tree / ".tartape")) == before
    assert ok("stream", small_tree) == sealed
