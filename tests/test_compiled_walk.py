"""The record walk in C (csrc/walk.c) against the pure-Python walk, the reference.

Both paths must record the same: the same index rows, tapes and fingerprint, the
same warnings, the same errors; on fixed hard trees, on random trees, and on trees
changed while the walk is in them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountutil import NOBODY
from trees import build_deep_tree, build_hard_tree

from tartapefs import TapeRecorder, native, scan
from tartapefs.errors import TartapeError

pytestmark = [pytest.mark.index,
              pytest.mark.skipif(native.module is None, reason=f"the C extension is not in use: {native.ACTIVE}")]

PATHS = ("pure", "compiled")


def recording(src: Path, index: Path, exclude_hook=None, **options) -> dict:
    """What one recording of ``src`` gives: fingerprint, every row of the index, the
    tapes, the warnings, or the error (type and message); ``exclude_hook(source, name)``
    runs at every exclusion check (both paths make them at the same points)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("tartapefs")
    log.addHandler(handler)
    original = scan.Excluder.__call__
    if exclude_hook is not None:
        options.setdefault("exclude", ["\0never"])
        scan.Excluder.__call__ = lambda self, source, name: exclude_hook(source, name) or original(self, source, name)
    try:
        fingerprint = TapeRecorder(str(src), index_path=str(index), **options).commit()
    except (TartapeError, OSError) as err:
        return {"error": f"{type(err).__name__}: {err}", "warnings": records}
    finally:
        log.removeHandler(handler)
        scan.Excluder.__call__ = original
    db = sqlite3.connect(index)
    try:
        rows = db.execute("SELECT * FROM members ORDER BY offset").fetchall()
        tapes = db.execute("SELECT * FROM tapes ORDER BY number").fetchall()
    finally:
        db.close()
    os.unlink(index)
    return {"fingerprint": fingerprint, "rows": rows, "tapes": tapes, "warnings": records}


def on_both(monkeypatch, make_tree, **options) -> dict[str, dict]:
    """``make_tree()`` -> (src, index, exclude_hook or None), called afresh for each path."""
    outcomes = {}
    for path in PATHS:
        with monkeypatch.context() as m:
            if path == "pure":
                m.setattr(native, "module", None)
            src, index, hook = make_tree()
            outcomes[path] = recording(src, index, hook, **options)
    return outcomes


def assert_same(outcomes: dict[str, dict]) -> dict:
    pure, compiled = outcomes["pure"], outcomes["compiled"]
    assert compiled == pure
    return pure


@pytest.fixture(scope="module")
def hard_source(tmp_path_factory):
    top = tmp_path_factory.mktemp("hard-walk")
    tree = build_hard_tree(top)
    yield tree
    subprocess.run(["rm", "-rf", str(top)], check=False)


@pytest.mark.parametrize("options", [
    {},
    {"prefix": ""},
    {"prefix": "a/b" + "c" * 150},  # every name long: split or PAX
    {"anonymize": False},
    {"exclude": ["*.txt", "deep*", "links"]},
], ids=["default", "no_prefix", "long_prefix", "owners", "exclude"])
def test_the_hard_tree_records_the_same_on_both_paths(hard_source, tmp_path, monkeypatch, options):
    out = assert_same(on_both(monkeypatch, lambda: (hard_source.root, tmp_path / "i.db", None), **options))
    assert "rows" in out and len(out["rows"]) > 20
    assert any("FIFO" in w for w in out["warnings"])  # the FIFO is skipped with a warning on both


def test_the_compiled_walk_makes_rows_only_for_plain_members(hard_source):
    """Everything the walk hands back is what the Python code must make: the root, links,
    files with several links, names that need PAX, mtimes ustar cannot hold."""
    handed = []
    with scan.CompiledWalk(str(hard_source.root), prefix=b"data") as walk:
        offset = 0
        while not walk.done:
            _, rows, _, offset, _, entry = walk.step(offset)
            if entry is not None:
                handed.append(entry)
    kinds = {e.kind for e in handed}
    assert {"symlink", "hardlink", "dir", "file"} <= kinds
    assert handed[0].source == b""
    for e in handed:
        if e.kind == "file" and e.st.st_nlink == 1:
            name = b"data/" + e.source
            assert len(name) > 100 or not 0 <= e.st.st_mtime_ns < 8**11 * 10**9


def test_the_compiled_walk_yields_the_same_entries_as_the_python_walk(hard_source):
    """walk() itself (used by recordings with generated files): same entries, same order."""
    def entries(compiled: bool):
        it = scan._compiled_entries(str(hard_source.root), None, None, None) if compiled else \
            scan._walk(str(hard_source.root), None, None, None, None)
        return [(e.source, e.kind, e.linkname, e.st.st_mode, e.st.st_ino, e.st.st_size, e.st.st_mtime_ns,
                 e.st.st_ctime_ns, e.st.st_nlink) for e in it]

    assert entries(True) == entries(False)


@pytest.mark.parametrize("plan", [{"index_member": True}, {"shard_members": 7}], ids=["index_member", "shards"])
def test_planned_recordings_record_the_same_on_both_paths(hard_source, tmp_path, monkeypatch, plan):
    from tartapefs import PlanOptions

    assert_same(on_both(monkeypatch, lambda: (hard_source.root, tmp_path / "i.db", None), plan=PlanOptions(**plan)))


def test_a_tree_deeper_than_the_folder_budget_records_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "_folder_budget", lambda: 2)
    src, _, _ = build_deep_tree(tmp_path, 40 * 201)  # 40 levels of 200-byte names
    out = assert_same(on_both(monkeypatch, lambda: (src, tmp_path / "i.db", None)))
    assert len(out["rows"]) > 40 and out["error" if "error" in out else "tapes"]


# -- mutations while the walk is in the tree ---------------------------------------------

def _mutations():
    """name -> (source that triggers it, action(src)): each done once, at the exclusion check
    of that source, which both walks make before its lstat."""
    def replace_dir_by_symlink(src):
        os.rename(src / "d/sub", src / "gone")
        os.symlink("/etc", src / "d/sub")

    def move_up(src):
        os.rename(src / "d/sub", src / "moved")

    return {
        "vanished_file": (b"d/b.txt", lambda src: os.unlink(src / "d/b.txt")),
        "vanished_folder": (b"d/sub", lambda src: subprocess.run(["rm", "-rf", str(src / "d/sub")], check=True)),
        "folder_became_symlink": (b"d/sub", replace_dir_by_symlink),
        "file_became_folder": (b"d/b.txt", lambda src: (os.unlink(src / "d/b.txt"), os.mkdir(src / "d/b.txt"))),
        "file_grew": (b"d/b.txt", lambda src: (src / "d/b.txt").write_bytes(b"x" * 5000)),
        "folder_moved_below_budget": (b"d/sub/deeper/f", move_up),
        "fifo_appeared": (b"d/c.txt", lambda src: (os.unlink(src / "d/c.txt"), os.mkfifo(src / "d/c.txt"))),
        "symlink_retargeted": (b"d/link", lambda src: (os.unlink(src / "d/link"), os.symlink("x" * 150, src / "d/link"))),
    }


MUTATIONS = _mutations()


def _mutable_tree(top: Path, trigger: bytes, action):
    src = top / "src"
    (src / "d/sub/deeper").mkdir(parents=True)
    for rel in ("a.txt", "d/b.txt", "d/c.txt", "d/sub/s.txt", "d/sub/deeper/f", "z.txt"):
        (src / rel).write_bytes(rel.encode() * 3)
    os.symlink("a.txt", src / "d/link")
    os.link(src / "a.txt", src / "d/hard")
    for p in [src, *src.rglob("*")]:
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000), follow_symlinks=False)
    done = []

    def hook(source: bytes, name: bytes) -> bool:
        if source == trigger and not done:
            done.append(True)
            action(src)
            for p in [src, *src.rglob("*")]:  # the same mtimes on both paths' trees
                os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000), follow_symlinks=False)
        return False

    return src, top / "i.db", hook


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_tree_changed_during_the_walk_records_the_same(tmp_path, monkeypatch, mutation):
    monkeypatch.setattr(scan, "_folder_budget", lambda: 2)  # folders let go and reopened through '..'
    trigger, action = MUTATIONS[mutation]
    count = iter(range(100))

    def fresh():
        top = tmp_path / str(next(count))
        top.mkdir()
        return _mutable_tree(top, trigger, action)

    outcomes = on_both(monkeypatch, fresh)
    for out in outcomes.values():  # two trees made alike: their inode numbers and ctimes differ
        out["rows"] = [row[:9] + row[10:11] for row in out.get("rows", [])]
    out = assert_same(outcomes)
    if mutation == "folder_moved_below_budget":
        assert "moved while its folder was being recorded" in out["error"]


# -- random trees ------------------------------------------------------------------------

NAME = st.binary(min_size=1, max_size=70).map(lambda b: b.replace(b"\0", b"n").replace(b"/", b"s")).filter(
    lambda b: b not in (b".", b"..", b".tartape"))
MTIMES = st.sampled_from([0, 1_700_000_000_123_456_789, -5_000_000_000, 8**11 * 10**9, 8**11 * 10**9 - 1,
                          1_000_000_000])
ENTRY = st.tuples(st.lists(NAME, min_size=1, max_size=4), st.sampled_from(["file", "dir", "symlink", "hardlink",
                                                                           "fifo"]),
                  st.integers(0, 1500), st.sampled_from([0o644, 0o600, 0o755, 0o4711, 0o1777]), MTIMES)


def _build(root: Path, entries) -> None:
    root.mkdir()
    files = []
    for parts, kind, size, mode, mtime in entries:
        parent = root
        for part in parts[:-1]:
            parent = Path(os.fsdecode(os.fsencode(parent) + b"/" + part))
            if not os.path.lexists(parent):
                parent.mkdir()
            elif not stat.S_ISDIR(os.lstat(parent).st_mode):  # a file or symlink there: never followed
                break
        else:
            path = os.fsencode(parent) + b"/" + parts[-1]
            if os.path.lexists(path):
                continue
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(b"x" * size)
                os.chmod(path, mode)
                files.append(path)
            elif kind == "dir":
                os.mkdir(path)
            elif kind == "symlink":
                os.symlink(b"t" * (size % 300 + 1), path)
            elif kind == "hardlink" and files:
                os.link(files[size % len(files)], path)
            elif kind == "fifo":
                os.mkfifo(path)
            if os.path.lexists(path):
                os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(ENTRY, max_size=30),
       options=st.sampled_from([{}, {"prefix": ""}, {"prefix": "p" * 90}, {"anonymize": False},
                                {"exclude": ["*a*"]}]))
def test_random_trees_record_the_same_on_both_paths(monkeypatch, entries, options):
    with tempfile.TemporaryDirectory() as top:
        def make():
            root = Path(top) / "tree"
            if not root.exists():
                _build(root, entries)
            return root, Path(top) / "i.db", None

        assert_same(on_both(monkeypatch, make, **options))


# -- as an unprivileged user: the access checks ------------------------------------------

CHILD = r"""
import json, logging, os, sys
sys.path.insert(0, sys.argv[3])
from test_compiled_walk import recording
from tartapefs import native
if sys.argv[4] == "pure":
    native.module = None
os.setgroups([]); os.setgid(int(sys.argv[5])); os.setuid(int(sys.argv[5]))
print(json.dumps(recording(sys.argv[1], sys.argv[2]), default=lambda b: b.hex()))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_unreadable_entries_are_refused_the_same_on_both_paths(world_dir):
    src = world_dir / "src"
    (src / "open").mkdir(parents=True)
    (src / "open/a.txt").write_bytes(b"a")
    (src / "secret.txt").write_bytes(b"s")
    os.chmod(src / "secret.txt", 0o600)
    (src / "closed").mkdir()
    os.chmod(src / "closed", 0o700)
    (src / "theirs.txt").write_bytes(b"t")
    os.chown(src / "theirs.txt", NOBODY, NOBODY)
    os.chmod(src / "theirs.txt", 0o400)
    state = world_dir / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    out = {}
    for path in PATHS:
        index = state / f"{path}.db"
        proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(index), str(Path(__file__).parent), path,
                               str(NOBODY)], capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, proc.stderr
        out[path] = json.loads(proc.stdout)
    assert out["compiled"] == out["pure"]
    assert out["pure"]["error"].startswith("UsageError: 2 entries cannot be read, first closed")
    assert sorted(out["pure"]["warnings"]) == ["closed: cannot be read (permission denied)",
                                               "secret.txt: cannot be read (permission denied)"]


@pytest.mark.parametrize("row, reason", [
    ((0,) * 11 + (1 << 64,), "Python int too large to convert to SQLite INTEGER"),
    ((0,) * 12, "UNIQUE constraint failed: members.offset"),  # the same offset twice
], ids=["overflow", "constraint"])
def test_a_failed_compiled_insert_is_one_line_and_leaves_no_temporary(tmp_path, row, reason):
    from tartapefs.indexwriter import IndexWriter

    index = tmp_path / "index.db"
    with pytest.raises(TartapeError) as caught:
        with IndexWriter(str(index)) as writer:
            with writer.compiled_inserts() as inserter:
                inserter.insert([(0,) * 12, (512,) + (0,) * 11])
                inserter.insert([row])
    assert str(caught.value) == f"{index}: cannot write the index ({reason}); the previous index is unchanged"
    assert os.listdir(tmp_path) == []
