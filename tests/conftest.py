"""Shared pytest fixtures.

Sections: core (real trees recorded without FUSE) first; mount fixtures, if any,
live in their own section below it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mountutil import Mounts
from trees import HardTree, archive_of, build_hard_tree, build_small_tree, record


# === core fixtures: recorded trees, no FUSE ================================================


@pytest.fixture(scope="session")
def hard_tree(tmp_path_factory: pytest.TempPathFactory) -> HardTree:
    """The hard tree (see tests/trees.py), built once; tests must not change it."""
    return build_hard_tree(tmp_path_factory.mktemp("hard"))


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
