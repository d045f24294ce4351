"""The suite itself: every test in one tier, and a tier can run alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.index  # it runs pytest

TESTS = Path(__file__).resolve().parent


def collected(*args: str) -> list[str]:
    """Node ids ``pytest --collect-only ARGS`` selects from this folder."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *args, str(TESTS)], capture_output=True, text=True, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_a_tier_runs_alone_and_tests_that_mount_nothing_are_not_in_the_mount_tier():
    # Collection itself fails (conftest) when a test has no tier or two.
    pure = collected("-m", "pure")
    assert pure and not [i for i in pure if i.startswith(("tests/test_mount", "tests/test_load.py",
                                                          "tests/test_cli.py", "tests/test_readers.py"))], pure
    unmounted = collected("-m", "not mount")
    assert not [i for i in unmounted if i.startswith(("tests/test_mount.py", "tests/test_mount_faults.py",
                                                      "tests/test_load.py", "tests/test_http.py"))]
    # tartape-mount's refusals that mount nothing run where nothing can mount.
    assert any(i.startswith("tests/test_mount_cli.py::") for i in unmounted)
    assert set(pure) < set(unmounted)
