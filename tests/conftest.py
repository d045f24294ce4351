"""Shared pytest fixtures, and the test tiers.

Every test belongs to exactly one tier, by a marker on it or on its module
(registered in pyproject.toml): ``pure`` (no files at all), ``index`` (real
temporary trees and indexes, no FUSE) or ``mount`` (real mounts: skipped where
this machine cannot mount). ``slow`` marks the long ones on top of their tier.
``scripts/test -m pure`` runs the pure tier alone; the default run runs all.

Sections: the tiers, core fixtures (real trees recorded without FUSE), mount
fixtures, then the fixture that runs a test on both paths of the per-member loops
(pure Python and C).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mountutil import CAN_MOUNT, Mounts
from mutations import arm_race, disarm_race
from trees import HardTree, archive_of, build_hard_tree, build_report_tree, build_small_tree, record, scratch_dir


# === tiers ==================================================================================

TIERS = ("pure", "index", "mount")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without exactly one tier; skip mount tests where nothing can mount."""
    no_mount = pytest.mark.skip(reason="real mounts need root, /dev/fuse and fusermount3")
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: needs exactly one tier marker of {', '.join(TIERS)}, has {tiers or 'none'}"
            )
        if tiers == ["mount"] and not CAN_MOUNT:
            item.add_marker(no_mount)


# What a passing run may leave in pytest's temporary folder: the session's small trees. Big
# trees go when their test (tmp_path_retention_policy) or their module (scratch_dir) ends.
LEFT_BEHIND_MAX = 64 << 20  # bytes


def disk_usage(top: Path) -> int:
    """Bytes allocated below ``top`` (sparse files count what they really hold)."""
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


@pytest.fixture(scope="session", autouse=True)
def temporary_folder_stays_small(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A passing run must not leave gigabytes behind (pytest keeps the last three runs)."""
    yield
    if request.session.testsfailed:
        return  # failed tests keep their folders on purpose
    base = tmp_path_factory.getbasetemp()
    left = disk_usage(base)
    assert left <= LEFT_BEHIND_MAX, f"{left >> 20} MiB left in {base} after a passing run"


# === core fixtures: recorded trees, no FUSE ================================================


@pytest.fixture(scope="session")
def hard_tree(tmp_path_factory: pytest.TempPathFactory):
    """The hard tree (see tests/trees.py), built once; tests must not change it."""
    with scratch_dir(tmp_path_factory, "hard") as base:
        yield build_hard_tree(base)


@pytest.fixture(scope="session")
def hard_tape(hard_tree: HardTree):
    """The hard tree recorded with default options (index in SRC/.tartape/)."""
    return record(hard_tree.root)


@pytest.fixture(scope="session")
def hard_archive(hard_tape) -> bytes:
    """The hard tree's whole archive as bytes."""
    return archive_of(hard_tape)


@pytest.fixture
def world_dir():
    """An empty folder every user may enter (pytest's tmp_path is private to root), for
    tests that act as an unprivileged user."""
    top = Path(tempfile.mkdtemp(prefix="tartapefs-world-"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def small_tree(tmp_path):
    """A few ordinary files, a directory and a symlink at tmp_path/data, not recorded."""
    return build_small_tree(tmp_path)


@pytest.fixture
def my_dataset(tmp_path, monkeypatch):
    """The TarTape READMEs' ./my_dataset (see build_report_tree) in a fresh working
    directory, and the stand-in network clients' cloud emptied."""
    import fakeclients

    fakeclients.reset()
    root = build_report_tree(tmp_path, "my_dataset")
    monkeypatch.chdir(tmp_path)
    return root


# === mount fixtures ============================================================================


@pytest.fixture
def mounts(tmp_path):
    """Starts real mounts for one test and stops them all at its end, failed or not."""
    m = Mounts(tmp_path)
    yield m
    m.stop_all()


@pytest.fixture
def world_mounts(world_dir: Path):
    """Mounts inside a folder any user may enter; stopped before that folder is removed."""
    m = Mounts(world_dir)
    yield m
    m.stop_all()


# === the two paths of the per-member loops ====================================================


@pytest.fixture(params=["pure", "compiled"])
def hot_path(request, monkeypatch):
    """Runs a test once on each path of the per-member loops (tartapefs.native): the
    pure-Python reference, and the C extension (skipped where it is not in use). Readers and
    recorders choose their path when they are made, so the test's own objects follow it, and
    so do the programs it starts (TARTAPEFS_PURE in their environment)."""
    from tartapefs import native

    if request.param == "pure":
        monkeypatch.setattr(native, "module", None)
        monkeypatch.setenv("TARTAPEFS_PURE", "1")
    elif native.module is None:
        pytest.skip(f"the C extension is not in use: {native.ACTIVE}")
    return request.param


@pytest.fixture
def during_read(hot_path, monkeypatch):
    """``during_read(action)``: ``action()`` runs between a file's check and the check after
    its bytes are read (see arm_race), on the path the test runs on."""
    yield lambda action: arm_race(hot_path == "compiled", action, monkeypatch)
    if hot_path == "compiled":
        disarm_race()
