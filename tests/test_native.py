"""The C extension (tartapefs._native) against the pure-Python reference, and its build.

Pure tier for the encoders (hypothesis: byte for byte against format.py); the build tier
checks that a checkout with a compiler runs a fresh build, that the path in use is the one
``tartape --version`` names, and that an install without a compiler succeeds and runs the
pure-Python path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings

from strategies import OCT12, common_headers, headers
from tartapefs import format as fmt
from tartapefs import native
from tartapefs.reader import header_encoder
from trees import archive_of, record

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
TARTAPE = Path(sys.executable).parent / "tartape"

try:
    from tartapefs import _native
except ImportError:
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="the C extension is not built")


def compiler_available() -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0]) is not None and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def env_without_switch(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TARTAPEFS_PURE"}
    return {**env, **extra}


# --- the build --------------------------------------------------------------------------


@pytest.mark.index
@pytest.mark.skipif(not compiler_available(), reason="no C compiler or no Python headers here")
def test_a_checkout_with_a_compiler_runs_a_build_of_its_own_sources():
    """CI must test the compiled path: a missing or stale build fails here, not silently."""
    assert _native is not None, "the C extension was not built although a compiler is installed"
    assert _native.ABI == native.ABI
    if CSRC.is_dir():  # a source checkout (editable install): the build must be of these sources
        digest = hashlib.sha256()
        for path in sorted(CSRC.glob("*.[ch]")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        assert _native.SOURCE_HASH == digest.hexdigest(), "stale build: reinstall (scripts/test does)"


@pytest.mark.index
@pytest.mark.parametrize("switch", [None, "1", "0"])
def test_tartape_version_names_the_path_in_use(switch):
    env = env_without_switch() if switch is None else env_without_switch(TARTAPEFS_PURE=switch)
    out = subprocess.run([TARTAPE, "--version"], capture_output=True, env=env, check=True).stdout.decode()
    if switch == "1":
        assert "per-member loops: pure Python (TARTAPEFS_PURE is set)" in out
    elif _native is not None:
        assert "per-member loops: compiled (C extension)" in out
    else:
        assert "per-member loops: pure Python (the C extension is not built)" in out


@pytest.mark.index
def test_an_install_without_a_compiler_succeeds_and_runs_the_pure_path(tmp_path, small_tree):
    """As on a machine without gcc: CC=false. Built offline from a copy of the sources
    (no build isolation), installed into a folder of its own, run without site-packages."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(CSRC, src / "csrc")
    shutil.copytree(REPO / "tartapefs", src / "tartapefs", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", tmp_path / "wheel", src],
        capture_output=True, env=env_without_switch(CC="false"),
    )
    assert build.returncode == 0, build.stderr.decode()[-2000:]
    said = [ln for ln in (build.stdout + build.stderr).decode().splitlines() if "tartapefs: C extension" in ln]
    assert len(said) == 1 and "not built" in said[0] and "pure-Python path" in said[0]
    (wheel,) = (tmp_path / "wheel").glob("tartapefs-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", tmp_path / "site", wheel], check=True)
    expected = archive_of(record(small_tree))
    run = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys, tartapefs.native as n; from tartapefs.cli import main; "
         "print(n.ACTIVE, file=sys.stderr); sys.exit(main(['stream', sys.argv[1]]))", small_tree],
        capture_output=True, env=env_without_switch(PYTHONPATH=str(tmp_path / "site")), cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.decode().strip() == "pure Python (the C extension is not built)"
    assert run.stdout == expected


# --- the ustar encoder ----------------------------------------------------------------


def plain(h: fmt.Header) -> bool:
    """format.encode_header's fast-path condition: one plain ustar block."""
    return (len(h.name) <= 100 and not (h.linkname or h.uid or h.gid or h.uname or h.gname)
            and 0 <= h.size < OCT12 and 0 <= h.mtime_ns // 10**9 < OCT12)


@pytest.mark.pure
@needs_native
@settings(max_examples=1500)
@given(common_headers())
@example(fmt.Header(name=b"x" * 100, kind=fmt.FILE, size=OCT12 - 1, mode=0o7777, mtime_ns=OCT12 * 10**9 - 1))
@example(fmt.Header(name=b"\xff\xfe/\n", kind=fmt.DIR, mtime_ns=-1))
def test_the_c_header_is_format_s_bytes_exactly_where_a_plain_block_applies(h):
    got = _native.header(h)
    assert (got is not None) == plain(h)
    if got is not None:
        assert got == fmt.encode_header(h)


@pytest.mark.pure
@needs_native
@settings(max_examples=300)
@given(headers())
def test_the_c_header_hands_every_other_header_back(h):
    got = _native.header(h)
    assert got is None if not plain(h) else got == fmt.encode_header(h)


@pytest.mark.pure
@settings(max_examples=500)
@given(common_headers())
def test_the_readers_header_encoder_gives_format_s_bytes_on_both_paths(h):
    expected = fmt.encode_header(h)
    for module in ({None, native.module} if _native is None else {None, _native}):
        saved, native.module = native.module, module
        try:
            assert header_encoder()(h) == expected
        finally:
            native.module = saved
