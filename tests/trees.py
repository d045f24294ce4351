"""Test trees that exercise every hard corner of the format, and a tree comparer.

Everything works on bytes paths through directory file descriptors (``dir_fd``),
so the ~4000-byte deep path never hits PATH_MAX in the tests themselves.

The hard tree (``build_hard_tree``) holds: file sizes 0/1/511/512/513; paths
longer than 100, 255 and ~4000 bytes; a 200-byte component; names that are
not UTF-8 or hold a newline; dangling symlinks and a 150-byte link target; a
hard-link triple; empty directories; a FIFO (TAR cannot carry it); mtimes
before 1970 and after 2242 (beyond the 11-digit octal field).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30
SPARSE_SIZE = 8 * GIB + 1          # needs a PAX size record (ustar stops at 8 GiB - 1)
PRE_1970 = -1_000_000_000          # 1938, whole seconds (tar stores seconds)
AFTER_2242 = 9_000_000_000         # 2255, > 8**11 - 1 seconds
BASE_MTIME_NS = 1_600_000_000_123_456_789

DEEP_COMPONENT = 200               # bytes per directory name in the deep chain


@contextmanager
def scratch_dir(factory, name: str) -> Iterator[Path]:
    """A folder from pytest's ``tmp_path_factory`` for a module- or session-scoped fixture,
    removed when the fixture ends (pytest would keep it, and its last three runs)."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def content(rel: bytes, size: int) -> bytes:
    """Deterministic, path-dependent file content of ``size`` bytes."""
    seed = hashlib.sha256(rel).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class HardTree:
    root: Path                         # the source folder (its name is the default prefix)
    deep_file: bytes = b""             # relative path of the ~4000-byte member
    fifo: bytes = b""                  # relative path of the FIFO (must be skipped)
    files: dict[bytes, bytes] = field(default_factory=dict)   # rel path -> content

    @property
    def name(self) -> bytes:
        return os.fsencode(self.root.name)


class _Builder:
    """Creates entries below ``root`` component by component with ``dir_fd``."""

    def __init__(self, root: Path) -> None:
        os.mkdir(root)
        self.root = os.fsencode(root)
        self.mtimes: list[tuple[bytes, int]] = []   # applied last, deepest first

    def _parent(self, rel: bytes) -> tuple[int, bytes]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        *dirs, base = rel.split(b"/")
        for d in dirs:
            nfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd, base

    def _do(self, rel: bytes, action, mtime_ns: int | None) -> None:
        fd, base = self._parent(rel)
        try:
            action(fd, base)
        finally:
            os.close(fd)
        step = len(self.mtimes) * 1_000_000_001     # distinct seconds and ns per entry
        self.mtimes.append((rel, BASE_MTIME_NS + step if mtime_ns is None else mtime_ns))

    def dir(self, rel: bytes, mode: int = 0o755, mtime_ns: int | None = None) -> None:
        def act(fd: int, base: bytes) -> None:
            os.mkdir(base, dir_fd=fd)
            os.chmod(base, mode, dir_fd=fd)
        self._do(rel, act, mtime_ns)

    def file(self, rel: bytes, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
        def act(fd: int, base: bytes) -> None:
            wfd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
            try:
                os.write(wfd, data)
                os.fchmod(wfd, mode)
            finally:
                os.close(wfd)
        self._do(rel, act, mtime_ns)

    def symlink(self, rel: bytes, target: bytes) -> None:
        self._do(rel, lambda fd, base: os.symlink(target, base, dir_fd=fd), None)

    def hardlink(self, rel: bytes, existing: bytes) -> None:
        def act(fd: int, base: bytes) -> None:
            os.link(self.root + b"/" + existing, base, dst_dir_fd=fd)
        fd, base = self._parent(rel)
        try:
            act(fd, base)
        finally:
            os.close(fd)

    def fifo(self, rel: bytes) -> None:
        self._do(rel, lambda fd, base: os.mkfifo(base, dir_fd=fd), None)

    def finish(self) -> None:
        """Set every mtime, children before parents, then the root's."""
        for rel, ns in sorted(self.mtimes, key=lambda m: -m[0].count(b"/")):
            fd, base = self._parent(rel)
            try:
                os.utime(base, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
        os.utime(self.root, ns=(BASE_MTIME_NS, BASE_MTIME_NS))


def build_hard_tree(parent: Path, name: str = "data") -> HardTree:
    """Build the hard tree at ``parent/name`` and describe it."""
    tree = HardTree(root=parent / name)
    b = _Builder(tree.root)

    def f(rel: bytes, size: int, **kw) -> None:
        tree.files[rel] = content(rel, size)
        b.file(rel, tree.files[rel], **kw)

    b.dir(b"sizes")
    for size in (0, 1, 511, 512, 513):
        f(b"sizes/size_%d" % size, size)
    b.dir(b"modes", mode=0o750)
    f(b"modes/exec.sh", 40, mode=0o755)
    f(b"modes/private", 7, mode=0o600)
    f(b"modes/setuid", 3, mode=0o4755)
    b.dir(b"modes/sticky", mode=0o1777)
    b.dir(b"names")
    f(b"names/\xff\xfe", 5)
    f(b"names/new\nline", 6)
    f(b"names/" + b"c" * 200, 9)                            # a 200-byte component
    f("names/ñandú €".encode(), 4)
    long_binary = b"names/" + b"bin\xff\xfe" * 26               # > 100, not UTF-8: hdrcharset
    b.dir(long_binary)
    f(long_binary + b"/x\xff", 11)
    b.dir(b"long")
    b.dir(b"long/" + b"a" * 60)
    f(b"long/" + b"a" * 60 + b"/" + b"b" * 60, 100)         # > 100: ustar prefix + name
    b.dir(b"long/" + b"p" * 120)
    b.dir(b"long/" + b"p" * 120 + b"/" + b"q" * 120)
    f(b"long/" + b"p" * 120 + b"/" + b"q" * 120 + b"/" + b"r" * 40, 600)   # > 255: PAX path
    tree.deep_file = _deep_chain(b, f, min(4000, 4090 - len(b.root)) - len(tree.name) - len(b"/deep/"))
    b.dir(b"links")
    b.symlink(b"links/dangling", b"does/not/exist")
    b.symlink(b"links/long_target", b"t" * 150)              # > 100: PAX linkpath
    b.symlink(b"links/to_file", b"../sizes/size_513")
    b.symlink(b"links/to_dir", b"../sizes")
    b.dir(b"hard")
    f(b"hard/one", 700)
    b.hardlink(b"hard/two", b"hard/one")
    b.hardlink(b"links/three", b"hard/one")                  # the third, in another directory
    b.dir(b"empty")
    b.dir(b"empty/nested", mode=0o700)
    b.dir(b"times")
    f(b"times/before_1970", 10, mtime_ns=PRE_1970 * 10**9)
    f(b"times/after_2242", 10, mtime_ns=AFTER_2242 * 10**9 + 5)
    b.dir(b"times/old_dir", mtime_ns=PRE_1970 * 10**9)
    tree.fifo = b"special_fifo"
    b.fifo(tree.fifo)
    b.finish()
    return tree


def _deep_chain(b: _Builder, f, budget: int) -> bytes:
    """deep/<200-byte dirs...>/<leaf>, ``budget`` bytes below deep/; returns the leaf's path.
    The hard tree keeps the absolute path < PATH_MAX, so tools given full paths cope."""
    rel = b"deep"
    b.dir(rel)
    i = 0
    while budget - (len(rel) - 4) > DEEP_COMPONENT + 1 + 100:
        rel += b"/" + (b"%02d" % i).ljust(DEEP_COMPONENT, b"d")
        b.dir(rel)
        i += 1
    leaf = rel + b"/" + b"L" * (budget - (len(rel) - 4) - 1)
    f(leaf, 513)
    return leaf


def build_deep_tree(parent: Path, below: int, name: str = "data") -> tuple[Path, bytes, bytes]:
    """A tree whose one file lies ``below`` bytes under deep/, at any depth the caller
    likes (also beyond PATH_MAX from /). Returns (root, leaf rel path, content)."""
    root, files = parent / name, {}
    b = _Builder(root)

    def f(rel: bytes, size: int) -> None:
        files[rel] = content(rel, size)
        b.file(rel, files[rel])

    leaf = _deep_chain(b, f, below)
    b.finish()
    return root, leaf, files[leaf]


def build_sparse_tree(parent: Path, name: str = "sparse") -> tuple[Path, bytes]:
    """A tree with an 8 GiB + 1 byte file that is never materialized: a hole with
    b'HEAD' at 0 and b'\\x01' as its last byte. Returns (root, small file content)."""
    root = parent / name
    root.mkdir()
    with open(root / "big", "wb") as fh:
        os.truncate(fh.fileno(), SPARSE_SIZE)
        os.pwrite(fh.fileno(), b"HEAD", 0)
        os.pwrite(fh.fileno(), b"\x01", SPARSE_SIZE - 1)
    small = content(b"zz_after", 300)
    (root / "zz_after").write_bytes(small)
    return root, small


def build_small_tree(parent: Path, name: str = "data") -> Path:
    """A few ordinary members, for tests that mutate or re-record."""
    root = parent / name
    b = _Builder(root)
    b.dir(b"sub")
    for rel, size in ((b"a.txt", 1000), (b"b.txt", 3), (b"sub/c.txt", 2000), (b"sub/d.txt", 0)):
        b.file(rel, content(rel, size))
    b.symlink(b"link", b"a.txt")
    b.finish()
    return root


def build_report_tree(parent: Path, name: str = "my_dataset", big: int = 0) -> Path:
    """The dataset the TarTape READMEs use: ``reports/annual_2024.pdf`` (3000 bytes)
    among a few files, a folder, an empty folder and a symlink. With ``big``, a
    file ``big.bin`` of that many bytes comes before ``reports/``: a hole with
    b"BIG<" at its start and b">BIG" at its end, so gigabyte offsets cost no disk.

    Names sort the same by whole path (tartape 3.x's order) and folder by folder
    (tartapefs' order), so both give the same member list.
    """
    root = parent / name
    b = _Builder(root)
    for rel, size in ((b"a.txt", 1000), (b"docs/guide.md", 200), (b"reports/annual_2024.pdf", 3000),
                      (b"reports/q1.csv", 77)):
        if b"/" in rel and not (root / os.fsdecode(rel.split(b"/")[0])).exists():
            b.dir(rel.split(b"/")[0])
        b.file(rel, content(rel, size))
    b.dir(b"empty")
    b.symlink(b"link", b"a.txt")
    if big:
        def sparse(fd: int, base: bytes) -> None:
            wfd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            try:
                os.ftruncate(wfd, big)
                os.pwrite(wfd, b"BIG<", 0)
                os.pwrite(wfd, b">BIG", big - 4)
            finally:
                os.close(wfd)
        b._do(b"big.bin", sparse, None)
    b.finish()
    return root


# --- snapshots and comparison ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str          # 'file', 'dir', 'symlink' or 'other'
    mode: int          # permission bits (0o7777)
    mtime: int         # seconds, floored
    size: int = 0
    sha256: str = ""
    target: bytes = b""
    inode: tuple[int, int] = (0, 0)


def _entry(dirfd: int, name: bytes) -> Entry:
    st = os.lstat(name, dir_fd=dirfd)
    common = dict(mode=stat.S_IMODE(st.st_mode), mtime=st.st_mtime_ns // 10**9)
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
        with os.fdopen(fd, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        return Entry("file", size=st.st_size, sha256=digest, inode=(st.st_dev, st.st_ino), **common)
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", **common)
    if stat.S_ISLNK(st.st_mode):
        return Entry("symlink", target=os.readlink(name, dir_fd=dirfd), **common)
    return Entry("other", **common)


def snapshot(root: Path | bytes, skip: tuple[bytes, ...] = (b".tartape",)) -> dict[bytes, Entry]:
    """Every entry below ``root`` by relative bytes path (b'' is the root), lstat only."""
    top = os.fsencode(root)
    snap = {b"": Entry("dir", stat.S_IMODE(os.lstat(top).st_mode), os.lstat(top).st_mtime_ns // 10**9)}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        rel_dir = dirpath[len(top):].lstrip(b"/")
        if rel_dir in skip:
            dirnames[:] = []   # fwalk still yields the skipped root once
            continue
        for name in dirnames + filenames:
            rel = rel_dir + b"/" + name if rel_dir else name
            if rel not in skip:
                snap[rel] = _entry(dirfd, name)
        dirnames[:] = [d for d in dirnames if (rel_dir + b"/" + d if rel_dir else d) not in skip]
    return snap


def hardlink_groups(snap: dict[bytes, Entry]) -> set[frozenset[bytes]]:
    groups: dict[tuple[int, int], set[bytes]] = {}
    for rel, e in snap.items():
        if e.kind == "file":
            groups.setdefault(e.inode, set()).add(rel)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def tree_differences(src: Path, dst: Path, symlink_mtimes: bool = True) -> list[str]:
    """What differs between a source tree and its extraction, as readable lines.

    Compares type, size, content hash, link target, permission bits, mtime
    (seconds; directories too) and hard-link grouping. Entries TAR cannot carry
    (FIFOs...) must be absent from ``dst``; ``.tartape`` is ignored in ``src``.
    """
    a, b = snapshot(src), snapshot(dst)
    carried = {rel: e for rel, e in a.items() if e.kind != "other"}
    problems = [f"missing {rel!r}" for rel in carried.keys() - b.keys()]
    problems += [f"unexpected {rel!r}" for rel in b.keys() - carried.keys()]
    for rel in sorted(carried.keys() & b.keys()):
        want, got = carried[rel], b[rel]
        fields = ["kind", "size", "sha256", "target"]
        if want.kind != "symlink":
            fields.append("mode")
        if want.kind != "symlink" or symlink_mtimes:
            fields.append("mtime")
        for name in fields:
            if getattr(want, name) != getattr(got, name):
                problems.append(f"{rel!r}: {name} {getattr(want, name)!r} != {getattr(got, name)!r}")
    if hardlink_groups(carried) != hardlink_groups(b):
        problems.append(f"hard links {hardlink_groups(carried)} != {hardlink_groups(b)}")
    return problems


def expected_names(src: Path, prefix: bytes | None = None) -> set[bytes]:
    """Archive member names the source should give (dirs end in '/')."""
    prefix = os.fsencode(src.name) if prefix is None else prefix
    names = set()
    for rel, e in snapshot(src).items():
        if e.kind == "other" or (rel == b"" and not prefix):
            continue
        name = b"/".join(p for p in (prefix, rel) if p)
        names.add(name + b"/" if e.kind == "dir" else name)
    return names


def tree_files(root: Path) -> dict[str, bytes]:
    """Content of every regular file below ``root`` by archive name (``ROOT/rel``), ``.tartape`` left out."""
    return {f"{root.name}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and ".tartape" not in p.relative_to(root).parts}


def tar_files(data: bytes) -> dict[str, bytes]:
    """Content of every regular file of the tar archive ``data``, read by Python's tarfile."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


# --- recording helpers --------------------------------------------------------------------


def record(src: Path, **options) -> "Tape":
    """Record ``src`` with TapeRecorder and open the tape it wrote."""
    from tartapefs import Tape, TapeRecorder

    TapeRecorder(src, **options).commit()
    index_path = options.get("index_path")
    return Tape.open(index_path) if index_path else Tape.discover(src)


def archive_of(tape: "Tape") -> bytes:
    """The whole archive, read in one call through TapeReader."""
    from tartapefs import TapeReader

    with TapeReader(tape) as reader:
        return reader.read(0, tape.total_size)
