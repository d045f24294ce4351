"""The security model (docs/SECURITY.md): who can read a mount, that no byte from outside
the source tree is ever served through it, and that member names cannot escape on extraction."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mountutil import NEEDS_MOUNT, as_nobody, stream_bytes
from mutations import OUTSIDE_BYTE
from trees import _Builder, archive_of, content, record



# --- who can read the mount ----------------------------------------------------------------


@NEEDS_MOUNT
@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_only_the_mounting_user_reads_the_mount_unless_allow_other(world_dir, world_mounts):
    src = world_dir / "data"
    _Builder(src).finish()
    (src / "a.txt").write_bytes(content(b"a.txt", 5000))
    os.chmod(src / "a.txt", 0o644)
    # Control: nobody can reach and read an ordinary file next to the mount points.
    (world_dir / "plain.txt").write_text("anyone")
    assert as_nobody("cat", world_dir / "plain.txt").stdout == b"anyone"
    private = world_mounts.background(src)
    shared = world_mounts.background(src, None, "-o", "allow_other")
    # Modes are not what stops nobody: the mount's folder and file are open to all.
    assert os.stat(private.mnt).st_mode & 0o005 == 0o005 and os.stat(private.file).st_mode & 0o004
    denied = as_nobody("cat", private.file)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert as_nobody("ls", private.mnt).returncode != 0
    assert open(private.file, "rb").read() == stream_bytes(src)  # the mounting user reads it
    allowed = as_nobody("cat", shared.file)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == stream_bytes(src)


# --- nothing from outside the tree -----------------------------------------------------------


def build_deep(parent: Path) -> Path:
    root = parent / "data"
    b = _Builder(root)
    for d in (b"x", b"x/y", b"x/y/z"):
        b.dir(d)
    b.file(b"x/y/z/f.bin", content(b"f.bin", 200_000))
    b.file(b"zz.txt", content(b"zz.txt", 100))
    b.finish()
    return root


def read_until_error(path: Path) -> tuple[bytes, int | None]:
    got = bytearray()
    with open(path, "rb", buffering=0) as f:
        while True:
            try:
                data = f.read(1 << 20)
            except OSError as err:
                return bytes(got), err.errno
            if not data:
                return bytes(got), None
            got += data


@NEEDS_MOUNT
@pytest.mark.parametrize("component", ["x", "x/y", "x/y/z", "x/y/z/f.bin"])
def test_a_symlink_swapped_into_any_path_component_never_serves_outside_bytes(mounts, tmp_path, component):
    src = build_deep(tmp_path)
    tape = record(src)
    reference = archive_of(tape)
    mount = mounts.foreground(src)
    # The same tree outside, same names, sizes, modes and mtimes, other content.
    outside = tmp_path / "outside"
    shutil.copytree(src, outside, symlinks=True, copy_function=shutil.copy2)
    st = os.stat(outside / "x/y/z/f.bin")
    (outside / "x/y/z/f.bin").write_bytes(OUTSIDE_BYTE * st.st_size)
    os.utime(outside / "x/y/z/f.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    moved = tmp_path / "moved"
    os.rename(src / component, moved)
    os.symlink(outside / component, src / component)
    got, err = read_until_error(mount.file)
    f = tape.locate("data/x/y/z/f.bin")
    assert err == errno.EIO and len(got) <= f.offset and got == reference[: len(got)]
    assert OUTSIDE_BYTE * 64 not in got
    # Put back as it was, the tree is served again (the check is by path, every read); a file
    # renamed away and back has a new ctime, though, and stays refused.
    os.unlink(src / component)
    os.rename(moved, src / component)
    with open(mount.file, "rb") as fh:
        fh.seek(f.body_offset)
        if component.endswith("f.bin"):
            with pytest.raises(OSError) as info:
                fh.read(f.size)
            assert info.value.errno == errno.EIO
        else:
            assert fh.read(f.size) == content(b"f.bin", 200_000)


# --- member names ------------------------------------------------------------------------------


def unsafe_names(archive: bytes) -> list[str]:
    """Names (and hard-link targets) that are absolute or climb with '..', as tarfile reads them."""
    bad = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        for m in tf.getmembers():
            for name in filter(None, (m.name, m.linkname if m.islnk() else "")):
                if name.startswith("/") or ".." in name.split("/"):
                    bad.append(name)
    return bad


@pytest.mark.index
def test_no_member_name_of_the_hard_tree_is_absolute_or_climbs(hard_tape, hard_archive):
    assert unsafe_names(hard_archive) == []
    for m in hard_tape.members():
        raw = os.fsencode(m.arc_path)
        assert not raw.startswith(b"/") and b".." not in raw.split(b"/"), raw


odd_component = st.one_of(
    st.sampled_from([b"...", b"..a", b"a..", b". .", b" ..", b".. ", b"-", b"--x", b"\\..\\",
                     b"..\\..", b"C:", b"~", b"\n..", b"\xff..", b".tartape", b"./", b"/"]),
    st.binary(min_size=1, max_size=12),
).map(lambda raw: raw.replace(b"/", b"_").replace(b"\0", b"_")).filter(lambda raw: raw not in (b".", b".."))


@pytest.mark.index
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=st.lists(st.lists(odd_component, min_size=1, max_size=3), min_size=1, max_size=6),
       prefix=st.sampled_from([None, "", "data", "a/b"]))
def test_names_built_from_odd_paths_are_relative_and_never_climb(paths, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        for parts in paths:
            parent = os.fsencode(root)
            for part in parts[:-1]:
                parent = os.path.join(parent, part)
                if not os.path.isdir(parent):
                    if os.path.lexists(parent):
                        break
                    os.mkdir(parent)
            else:
                leaf = os.path.join(parent, parts[-1])
                if not os.path.lexists(leaf):
                    with open(leaf, "wb") as f:
                        f.write(b"x")
        options = {} if prefix is None else {"prefix": prefix}
        tape = record(root, index_path=os.path.join(tmp, "index.db"), **options)
        with tape:
            assert unsafe_names(archive_of(tape)) == []
