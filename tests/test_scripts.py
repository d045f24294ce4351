"""The README's two commands as a new user meets them: scripts/demo and the set-up it shares
with scripts/test (scripts/lib.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT, daemon_env

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.index
def test_each_set_up_step_that_does_work_says_so_in_one_line(tmp_path):
    """A fresh machine spends minutes installing: each step announces itself (here with a
    stand-in interpreter, so nothing is installed)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "x.c").write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    done = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/lib.sh"; TT_REPO="{tmp_path}"; tt_venv_setup'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"set-up: upgrading pip in {tmp_path}/.venv",
        f"set-up: installing tartapefs and its extras into {tmp_path}/.venv (pyfuse3 is built: a minute or two)",
    ]
    again = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/lib.sh"; TT_REPO="{tmp_path}"; tt_venv_setup'],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr == ""  # a ready machine: silent


@NEEDS_MOUNT
@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "tartape-mount").exists(), reason="no .venv in the repository")
def test_the_demo_runs_and_says_how_to_run_the_commands(tmp_path):
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo")], capture_output=True, text=True,
                          env={**daemon_env(), "TMPDIR": str(tmp_path)}, stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== identical" in done.stdout
    venv_bin = f"{REPO}/.venv/bin"
    assert f"== tartape and tartape-mount are in {venv_bin} (not on PATH): run them as" in done.stdout
    assert f"source {venv_bin}/activate" in done.stdout
    assert not [line for line in open("/proc/self/mountinfo") if str(tmp_path) in line]
    assert os.listdir(tmp_path) == []  # the demo removed its work folder
