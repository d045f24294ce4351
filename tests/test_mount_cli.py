"""``tartape-mount`` refusing and reporting without mounting: these need no FUSE device
(unmounting needs root to mount a tmpfs to refuse)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mountutil import (TARTAPE_MOUNT, daemon_pids, force_unmount, mounted_fstype, run_as_nobody, run_mount_cli,
                       tmpfs)
from trees import build_small_tree

pytestmark = pytest.mark.index


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_an_unreadable_source_is_one_line_and_nothing_starts(world_dir):
    src = build_small_tree(world_dir)
    os.chmod(src, 0o700)  # root's; nobody may not list it
    mnt = world_dir / "mnt"
    mnt.mkdir()
    done = run_as_nobody("tartapefs.mount", src, mnt)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"tartape-mount: {src}: source cannot be read (permission denied)"]
    assert daemon_pids(mnt) == [] and mounted_fstype(mnt) is None
    assert not (src / ".tartape").exists()


def test_a_background_daemon_that_cannot_be_started_is_one_line(tmp_path, monkeypatch, capsys):
    from tartapefs import mount

    src = build_small_tree(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    missing = str(tmp_path / "no-such-python")
    monkeypatch.setattr(sys, "executable", missing)
    assert mount.run_in_background(mount.parse_args([str(src), str(mnt)])) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"tartape-mount: {missing}: cannot start the background daemon "
                     "(No such file or directory); try --foreground"]
    assert mounted_fstype(mnt) is None


def test_unmounting_what_is_not_mounted_is_one_line(tmp_path):
    done = run_mount_cli("-u", tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"tartape-mount: {tmp_path}: not mounted"]


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    if len(TARTAPE_MOUNT) != 1:
        pytest.skip("the tartape-mount console script is not installed next to this Python")
    unit = Path(__file__).resolve().parent.parent / "systemd" / "tartape-mount@.service"
    shutil.copy(unit, tmp_path / unit.name)
    # The unit names tartape-mount bare (systemd's search path); this test's copy may live in
    # a virtualenv, so point ExecStart at it with a drop-in, as the unit's comment documents.
    dropin = tmp_path / f"{unit.name}.d"
    dropin.mkdir()
    (dropin / "venv.conf").write_text(
        "[Service]\nExecStart=\n"
        f"ExecStart={TARTAPE_MOUNT[0]} -f $OPTIONS ${{SOURCE}} ${{MOUNTPOINT}}\n"
    )
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tartape-mount@test.service")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # verify exits 0 on many mistakes (a bad Type=, unknown keys) and only warns.
    assert "tartape-mount@" not in done.stderr, done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_dash_u_refuses_a_mount_that_is_not_tartapefs_and_leaves_it_mounted(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk):
        done = run_mount_cli("-u", disk)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [
            f"tartape-mount: {disk}: a tmpfs mount, not a tartapefs one; "
            "tartape-mount -u unmounts only tartapefs mounts"]
        assert mounted_fstype(disk) == "tmpfs"


def test_without_pyfuse3_tartape_mount_says_what_to_install_in_one_line(tmp_path):
    """As after `pip install .` without the fuse extra (pyfuse3 made unimportable)."""
    src = build_small_tree(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = ("import sys; sys.modules['pyfuse3'] = None; from tartapefs.mount import main; "
            "sys.exit(main(sys.argv[1:]))")
    try:
        for args in ([src, mnt], [src, mnt, "-f"]):
            done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.strip().splitlines() == [
                "tartape-mount: pyfuse3 is not installed: mounting needs the fuse extra "
                "(pip install 'tartapefs[fuse]', which builds against libfuse3-dev)"]
            assert mounted_fstype(mnt) is None and daemon_pids(mnt) == []
    finally:  # a background child has its own pyfuse3: whatever it mounted must go
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        force_unmount(mnt)


def test_options_take_any_case_and_the_help_quotes_no_stale_figures(tmp_path):
    from tartapefs import mount

    assert mount.parse_args([str(tmp_path), str(tmp_path), "--log-level", "info"]).log_level == "INFO"
    shown = run_mount_cli("--help")
    assert shown.returncode == 0 and "--direct-io" in shown.stdout and "GB/s" not in shown.stdout
    version = run_mount_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tartape-mount {mount.__version__}"
