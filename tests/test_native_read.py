"""The compiled read loop (one C call per request) against the pure-Python one.

Differential tests: on random trees, with and without a source changed underneath, and
with openat2 on and off, every random range gives the same bytes on both paths, or the
same error (type and message). The pure-Python path is the reference; the API and
integrity tests (test_api.py, test_integrity.py) run on both paths as well.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tartapefs import PlanOptions, Recording, Tape, TapeReader, TapeRecorder, TartapeError, native
from tartapefs import index as index_module
from tartapefs import reader as reader_module
from tartapefs.errors import IndexCorruptError
from mutations import arm_race, disarm_race
from test_hostile_index import REFUSED_IN_THE_READ, kind_7, nul_in_a_name, text_header_size, text_size
from trees import archive_of, build_small_tree, content, record, tar_files, tree_files

try:
    from tartapefs import _native
except ImportError:
    _native = None

pytestmark = [pytest.mark.index, pytest.mark.skipif(native.module is None, reason=native.ACTIVE)]

NS = 10**9
OUTSIDE = b"\xee"  # the bytes of files put outside the tree: recognisable if ever served


@contextmanager
def path(compiled: bool, c_rows: bool = True):
    """Readers made inside run on that path; ``c_rows=False``: the compiled loop is given
    Python's rows instead of reading them itself (as when its own connection is missing)."""
    saved, native.module = native.module, (_native if compiled else None)
    saved_rows = index_module.TapeRows.native_rows
    if not c_rows:
        index_module.TapeRows.native_rows = property(lambda self: None)
    try:
        yield
    finally:
        native.module = saved
        index_module.TapeRows.native_rows = saved_rows


@contextmanager
def openat2(use: bool):
    """Folders opened with openat2, or one component at a time (as on kernels without it)."""
    saved_py, reader_module._have_openat2 = reader_module._have_openat2, reader_module._have_openat2 and use
    saved_c = _native.set_openat2(use)
    try:
        yield
    finally:
        reader_module._have_openat2 = saved_py
        _native.set_openat2(saved_c)


@contextmanager
def splitting(min_rows: int):
    """Requests of at least ``min_rows`` rows served half by the helper thread (0: never)."""
    saved = _native.set_split(min_rows)
    try:
        yield
    finally:
        _native.set_split(saved)


def outcome(reader: TapeReader, offset: int, size: int):
    """The bytes a read gives, or its error as (type, message)."""
    try:
        return reader.read(offset, size)
    except (TartapeError, OSError) as err:
        return type(err), str(err)


def both(tape: Tape, ranges) -> tuple[list, list]:
    """The outcomes of ``ranges`` on the pure path and on the compiled one, which must not
    depend on where the compiled loop got its rows (read in C, or Python's), nor on whether
    a request's later members were served by the helper thread (every request of two rows
    or more split)."""
    outcomes = []
    for compiled, c_rows, split in ((False, True, 0), (True, True, 0), (True, False, 0), (True, True, 2)):
        with path(compiled, c_rows), splitting(split), TapeReader(tape) as r:
            outcomes.append([outcome(r, o, n) for o, n in ranges])
    assert outcomes[2] == outcomes[1], "the compiled loop gave other results from Python's rows"
    assert outcomes[3] == outcomes[1], "a request split between two threads gave other results"
    return outcomes[0], outcomes[1]


# --- random trees --------------------------------------------------------------------------

COMPONENT = st.sampled_from([b"a", b"b.txt", b"\xff\xfe", b"new\nline", b"n" * 60, b"x" * 120, b"sub"])
SIZES = st.sampled_from([0, 1, 511, 512, 513, 4096, 10_000]) | st.integers(0, 70_000)


@st.composite
def tree_specs(draw):
    """Entries to create, parents first: ("dir"|"file"|"symlink"|"hardlink", path, extra)."""
    entries, dirs, files = [], [b""], []
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        name = draw(COMPONENT) + b"%d" % len(entries)
        rel = parent + b"/" + name if parent else name
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink"]))
        if kind == "hardlink" and not files:
            kind = "file"
        if kind == "file":
            extra = (draw(SIZES), draw(st.sampled_from([0o644, 0o600, 0o755, 0o4755])),
                     draw(st.sampled_from([0, 1, NS - 1, 5 * 10**8])) + draw(st.sampled_from([1, 10**9, 1.6e9])) * NS)
            files.append(rel)
        elif kind == "dir":
            extra = None
            dirs.append(rel)
        elif kind == "symlink":
            extra = draw(st.sampled_from([b"a0", b"../x", b"t" * 150]))
        else:
            extra = draw(st.sampled_from(files))
        entries.append((kind, rel, extra))
    return entries


def build(root: Path, spec) -> list[bytes]:
    """Creates the tree; returns its regular files."""
    os.mkdir(root)
    files = []
    for kind, rel, extra in spec:
        where = os.path.join(os.fsencode(root), rel)
        if kind == "dir":
            os.mkdir(where)
        elif kind == "file":
            size, mode, mtime_ns = extra
            with open(where, "wb") as fh:
                fh.write(content(rel, size))
            os.chmod(where, mode)
            os.utime(where, ns=(int(mtime_ns), int(mtime_ns)))
            files.append(rel)
        elif kind == "symlink":
            os.symlink(extra, where)
        else:
            os.link(os.path.join(os.fsencode(root), extra), where)
    return files


def ranges_of(total: int):
    return st.lists(st.tuples(st.integers(0, total + 600), st.sampled_from([1, 100, 512, 513, 4096, 1 << 16, 1 << 20])
                              | st.integers(0, total + 10)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=tree_specs(), keep_owner=st.booleans(), prefix=st.sampled_from([None, "", "p" * 90]),
       data=st.data())
def test_random_trees_read_the_same_on_both_paths(spec, keep_owner, prefix, data):
    with tempfile.TemporaryDirectory() as top:
        root = Path(top) / "src"
        build(root, spec)
        tape = record(root, anonymize=not keep_owner, prefix=prefix, index_path=os.path.join(top, "index.db"))
        with tape:
            full = archive_of(tape)
            ranges = data.draw(ranges_of(tape.total_size)) + [(0, tape.total_size)]
            pure, compiled = both(tape, ranges)
            assert compiled == pure
            assert compiled[-1] == full


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_hard_tree_reads_the_same_on_both_paths(hard_tape, hard_archive, data):
    """Every corner of the format (PAX names and links, hard links, non-UTF-8 names, 4000-byte
    paths, mtimes outside ustar): random ranges, and ranges cut at member boundaries."""
    edges = [m.offset for m in hard_tape.members()] + [m.body_offset for m in hard_tape.members()]
    ranges = data.draw(ranges_of(hard_tape.total_size))
    ranges += [(max(0, e + d), n) for e in data.draw(st.lists(st.sampled_from(edges), max_size=6))
               for d, n in ((-1, 2), (0, 513), (-512, 1024))]
    pure, compiled = both(hard_tape, ranges + [(0, hard_tape.total_size)])
    assert compiled == pure
    assert compiled[-1] == hard_archive


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=tree_specs(), data=st.data())
def test_every_shard_of_a_random_tree_reads_the_same_on_both_paths(spec, data):
    """Shards lie one after another on the recording's line of bytes: each reader serves its
    own window of rows (the C loop gets the tape's start as its base). With an index member
    at the end of each, the requests that reach it are served by Python on both paths."""
    with tempfile.TemporaryDirectory() as top:
        root = Path(top) / "src"
        build(root, spec)
        index_path = os.path.join(top, "index.db")
        plan = PlanOptions(shard_size=16 << 10, index_member=data.draw(st.booleans(), label="index member"),
                           ratarmount_index=data.draw(st.booleans(), label="ratarmount index"))
        TapeRecorder(str(root), index_path=index_path, plan=plan).commit()
        with Recording.open(index_path) as recording:
            for tape in recording.tapes():
                ranges = data.draw(ranges_of(tape.total_size)) + [(0, tape.total_size)]
                pure, compiled = both(tape, ranges)
                assert compiled == pure
                assert isinstance(compiled[-1], bytes) and len(compiled[-1]) == tape.total_size


# --- sources changed underneath -------------------------------------------------------------


def _replace_keeping_times(path: bytes, data: bytes) -> None:
    st_ = os.stat(path)
    new = path + b".new"
    with open(new, "wb") as fh:
        fh.write(data)
    os.chmod(new, st_.st_mode)
    os.utime(new, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    os.rename(new, path)


def _rewrite_in_place_keeping_mtime(path: bytes, data: bytes) -> None:
    st_ = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(data[: st_.st_size])
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))


def _swap_parent_for_symlink(root: bytes, rel: bytes, outside: bytes) -> None:
    parent = os.path.dirname(rel)
    if not parent:
        return False
    copy = os.path.join(outside, b"copy%d" % len(os.listdir(outside)))
    shutil.copytree(os.path.join(root, parent), copy, symlinks=True)
    for dirpath, _dirs, names in os.walk(copy):
        for name in names:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                st_ = os.stat(full)
                with open(full, "wb") as fh:
                    fh.write(OUTSIDE * st_.st_size)
                os.utime(full, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    shutil.rmtree(os.path.join(root, parent))
    os.symlink(copy, os.path.join(root, parent))


def _move_parent_out_and_symlink(root: bytes, rel: bytes, outside: bytes, top: bool = False) -> None:
    """Same inodes, sizes and times below it: only the path walk shows the bytes are outside.
    ``top``: the topmost folder above the file instead of its own."""
    parent = os.path.dirname(rel)
    if top:
        parent = rel.split(b"/")[0] if parent else b""
    if not parent:
        return False
    moved = os.path.join(outside, b"moved%d" % len(os.listdir(outside)))
    os.rename(os.path.join(root, parent), moved)
    os.symlink(moved, os.path.join(root, parent))


# Each changes the file ``rel`` (or a folder above it) and returns False when it could not.
MUTATIONS = {
    "grow": lambda root, rel, out: open(os.path.join(root, rel), "ab").write(b"more"),
    "shrink": lambda root, rel, out: os.path.getsize(os.path.join(root, rel)) > 0 and os.truncate(
        os.path.join(root, rel), os.path.getsize(os.path.join(root, rel)) - 1),
    "delete": lambda root, rel, out: os.unlink(os.path.join(root, rel)),
    "touch": lambda root, rel, out: os.utime(os.path.join(root, rel), ns=(0, os.stat(os.path.join(root, rel)).st_mtime_ns + 1)),
    "chmod": lambda root, rel, out: os.chmod(os.path.join(root, rel), 0o640),
    "replaced_same_size_and_mtime": lambda root, rel, out: _replace_keeping_times(
        os.path.join(root, rel), b"X" * os.path.getsize(os.path.join(root, rel))),
    "rewritten_in_place_mtime_kept": lambda root, rel, out: _rewrite_in_place_keeping_mtime(
        os.path.join(root, rel), b"Y" * os.path.getsize(os.path.join(root, rel))),
    "file_moved_out_and_symlinked": lambda root, rel, out: (
        os.rename(os.path.join(root, rel), os.path.join(out, b"moved")),
        os.symlink(os.path.join(out, b"moved"), os.path.join(root, rel))),
    "fifo_in_its_place": lambda root, rel, out: (os.unlink(os.path.join(root, rel)), os.mkfifo(os.path.join(root, rel))),
    "parent_swapped_for_symlink_to_a_copy": lambda root, rel, out: _swap_parent_for_symlink(root, rel, out),
    "parent_moved_out_and_symlinked": _move_parent_out_and_symlink,
    "top_folder_moved_out_and_symlinked": lambda root, rel, out: _move_parent_out_and_symlink(root, rel, out, True),
}


DEEP = [("dir", b"deep", None), ("dir", b"deep/er", None),
        ("file", b"deep/er/file", (3000, 0o644, 1_600_000_000 * NS))]


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "by_components"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=tree_specs(), data=st.data())
def test_a_changed_source_gives_the_same_error_or_bytes_on_both_paths(use_openat2, mutation, spec, data):
    """Every mutation, on a random tree that always holds a file two folders down (so that
    the folder walk, not only the file's own open, is on the line), on a random file of it."""
    with tempfile.TemporaryDirectory() as top, openat2(use_openat2):
        root = Path(top) / "src"
        outside = os.path.join(os.fsencode(top), b"outside")
        os.mkdir(outside)
        files = build(root, DEEP + spec)
        tape = record(root, index_path=os.path.join(top, "index.db"))
        with tape:
            full = archive_of(tape)
            target = data.draw(st.sampled_from([b"deep/er/file"] + files))
            # A hard link's member has no body and is not checked: only a file's must fail.
            checked = tape.locate(b"src/" + target).kind == "file"
            changed = MUTATIONS[mutation](os.fsencode(root), target, outside) is not False and checked
            ranges = data.draw(ranges_of(tape.total_size)) + [(0, tape.total_size)]
            pure, compiled = both(tape, ranges)
            assert compiled == pure
            for (o, n), got in zip(ranges, compiled):
                if isinstance(got, bytes):
                    assert got == full[o:o + n]
            if changed:
                assert isinstance(pure[-1], tuple), "the whole tape read although a source changed"


# --- what the compiled loop serves itself, and what it never leaves behind -----------------


def test_plain_files_and_folders_never_go_back_to_python(small_tree, monkeypatch):
    """Only the symlink of the small tree is handed back; files and folders are served in C."""
    tape = record(small_tree)
    expected = archive_of(tape)
    handed = []
    original = TapeReader._handback

    def counting(self, i, pos, stop, why, detail):
        handed.append((self._index.members([self._python_rows()[i]])[0].kind, why))
        return original(self, i, pos, stop, why, detail)

    monkeypatch.setattr(TapeReader, "_handback", counting)
    with path(True), TapeReader(tape) as r:
        assert r.read(0, tape.total_size) == expected
    assert handed == [("symlink", _native.WHY_PYTHON)]


@pytest.mark.parametrize("whole", [True, False], ids=["whole_member", "body_only"])
def test_a_write_between_the_check_and_the_read_is_the_same_error_on_both_paths(small_tree, monkeypatch, whole):
    """The race made certain on each path (conftest.arm_race): the file is rewritten, its
    mtime put back, between its first check and the check after its read."""
    target = small_tree / "a.txt"
    pristine = target.read_bytes()
    outcomes = []
    for compiled in (False, True):
        tape = record(small_tree)  # again: restoring the bytes moved the ctime
        m = tape.locate("data/a.txt")
        offset, size = (m.offset, m.end - m.offset) if whole else (m.body_offset, m.size)

        def rewrite() -> None:
            st_ = os.stat(target)
            with open(target, "r+b") as fh:
                fh.write(b"N" * st_.st_size)
            os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns))

        with path(compiled), TapeReader(tape) as r:
            arm_race(compiled, rewrite, monkeypatch)
            try:
                outcomes.append(outcome(r, offset, size))
            finally:
                disarm_race()
                monkeypatch.undo()
        target.write_bytes(pristine)
    pure, compiled = outcomes
    assert pure[0].__name__ == "SourceChangedError" and "changed while being read" in pure[1], pure
    # Each path read its own recording (other ctimes): the messages agree but for the numbers.
    assert compiled[0] is pure[0] and re.sub(r"\d+", "N", compiled[1]) == re.sub(r"\d+", "N", pure[1])


def open_descriptors(tree: Path) -> set[tuple[int, str]]:
    """This process's descriptors of ``tree`` and what is below it (others come and go with
    whatever else the process holds: a collected object, a finished child's pipe)."""
    root, held = tree.resolve(), set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (listdir's own descriptor)
        if target == str(root) or target.startswith(f"{root}/"):
            held.add((int(fd), target))
    return held


@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
def test_reads_that_fail_leave_no_descriptor_open(small_tree, tmp_path, compiled):
    tape = record(small_tree)
    (small_tree / "sub" / "c.txt").write_bytes(b"changed")
    with path(compiled), TapeReader(tape) as r:
        before = open_descriptors(small_tree)
        assert before  # the reader's descriptor of the source folder: the count sees the tree
        for _ in range(3):
            assert isinstance(outcome(r, 0, tape.total_size), tuple)
            r.read(0, 512)
        assert open_descriptors(small_tree) == before


FORGERIES = REFUSED_IN_THE_READ + [kind_7, nul_in_a_name, text_size, text_header_size]


@pytest.mark.parametrize("forge", FORGERIES, ids=lambda f: f.__name__)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_forged_index_is_the_same_error_on_both_paths(forge, data):
    """The forgeries of test_hostile_index.py, read at random ranges. Where the damage lies in
    the range, both paths raise the same error (the compiled one hands the request to the
    pure-Python path). The pure path also refuses a range when a damaged row is only in the
    window of rows it fetched around it; the compiled loop fetches the range's rows alone and
    may serve it: then with the right length, and never the whole tape."""
    with tempfile.TemporaryDirectory() as top:
        src = build_small_tree(Path(top))
        index = Path(top) / "index.db"
        record(src, index_path=str(index)).close()
        forge(index)
        with Tape.open(str(index)) as tape:
            ranges = data.draw(ranges_of(tape.total_size)) + [(0, tape.total_size)]
            pure, compiled = both(tape, ranges)
    for (o, n), p, c in zip(ranges, pure, compiled):
        if c != p:
            assert p[0] is IndexCorruptError and isinstance(c, bytes), (o, n, p, c)
            assert len(c) == max(0, min(n, tape.total_size - o))
    assert isinstance(compiled[-1], tuple) and compiled[-1][0] is IndexCorruptError


# --- a request split between two threads ----------------------------------------------------


def many_small_files(root: Path, count: int = 120) -> None:
    """``count`` files of 0-9,000 bytes in three folders, a symlink among them."""
    for i in range(count):
        folder = root / f"d{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        rel = f"d{i % 3}/f{i:04d}".encode()
        (folder / f"f{i:04d}").write_bytes(content(rel, (i * 7919) % 9001))
    os.symlink("f0000", root / "d1" / "link")


def test_a_request_of_many_members_is_split_between_two_threads_and_reads_as_tarfile(tmp_path):
    """At the default threshold a request of many small files is served half by the helper
    thread (it exists afterwards, by its name); the bytes are the pure path's, and Python's
    tarfile reads every file back as it is on disk, in whole-tape, 1 MiB and odd reads."""
    src = tmp_path / "src"
    many_small_files(src)
    tape = record(src, index_path=str(tmp_path / "index.db"))
    with tape:
        with path(False), TapeReader(tape) as r:
            pure = r.read(0, tape.total_size)
        with path(True), TapeReader(tape) as r:
            whole = r.read(0, tape.total_size)
            chunked = b"".join(r.read(o, 1 << 20) for o in range(0, tape.total_size, 1 << 20))
            odd = b"".join(r.read(o, 77_777) for o in range(0, tape.total_size, 77_777))
    assert whole == chunked == odd == pure
    assert tar_files(whole) == tree_files(src)
    names = {Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")}
    assert "tartapefs-part" in names


@pytest.mark.parametrize("mutation", ["grow", "delete", "chmod", "replaced_same_size_and_mtime"])
@pytest.mark.parametrize("where", [0.3, 0.8], ids=["first_half", "later_half"])
def test_a_changed_file_in_either_half_of_a_split_request_is_the_same_error_as_the_pure_path(
        tmp_path, mutation, where):
    """The helper stops at the file it may not serve; the calling thread meets it again in
    order and hands it to Python, which raises the pure path's error for it."""
    src = tmp_path / "src"
    many_small_files(src)
    tape = record(src, index_path=str(tmp_path / "index.db"))
    with tape:
        files = sorted(m.source for m in tape.members() if m.kind == "file")
        MUTATIONS[mutation](os.fsencode(src), files[int(len(files) * where)], os.fsencode(tmp_path))
        pure, compiled = both(tape, [(0, tape.total_size), (0, 1 << 20)])
    assert compiled == pure
    assert isinstance(pure[0], tuple), pure[0]
