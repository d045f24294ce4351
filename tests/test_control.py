"""The control channel's folder and names, without a daemon: the folder must be this
user's own, private, and reached without following a symlink; the socket's name depends on
the mount point's real path only."""

from __future__ import annotations

import os

import pytest

from mountutil import NOBODY
from tartapefs import control
from tartapefs.errors import ControlError

pytestmark = pytest.mark.index


def test_the_folder_is_made_private_and_used(tmp_path):
    path = str(tmp_path / "tartapefs")
    fd = control.open_private_dir(path, create=True)
    try:
        st = os.fstat(fd)
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid())
    finally:
        os.close(fd)
    os.close(control.open_private_dir(path, create=True))  # there already: used as it is


@pytest.mark.parametrize("case", ["symlink", "open to others", "another owner", "a file"])
def test_a_folder_that_is_not_private_is_refused_in_one_line(tmp_path, case):
    path = tmp_path / "tartapefs"
    if case == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
        reason = "a symlink"
    elif case == "a file":
        path.write_text("")
        reason = "a symlink, not a folder"
    else:
        path.mkdir(mode=0o700)
        if case == "open to others":
            os.chmod(path, 0o755)
        else:
            os.chown(path, NOBODY, NOBODY)
        reason = "not private"
    with pytest.raises(ControlError) as err:
        control.open_private_dir(str(path), create=True)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value) and "\n" not in str(err.value)


def test_no_folder_means_no_daemon_of_this_user(tmp_path):
    with pytest.raises(ControlError, match="no control folder"):
        control.open_private_dir(str(tmp_path / "missing"), create=False)


def test_the_socket_is_named_after_the_real_mount_point(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    name = control.socket_name(str(tmp_path / "real" / "mnt"))
    assert name == control.socket_name(str(tmp_path / "link" / "mnt")) != control.socket_name(str(tmp_path / "mnt"))
    assert name.endswith(".sock") and len(control.fd_path(999, name)) < 108  # fits a socket address


def test_the_runtime_folder_of_root_and_of_users(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert control.runtime_dir() == "/run/tartapefs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert control.runtime_dir() == "/run/user/1000/tartapefs"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert control.runtime_dir() == str(tmp_path / "state" / "tartapefs" / "run")


def test_status_lines_for_people():
    status = {"mountpoint": "/mnt/t", "generation": 3, "recorded_at": 0, "archives": 2, "bytes": 4096,
              "refreshes": 4, "older_generations_open": 1,
              "recording": {"why": "SIGHUP", "started": 0, "folder": "/srv/data", "entries": 12000},
              "last": {"why": "--refresh", "started": 0, "ended": 0, "ok": True, "switched": True,
                       "message": "generation 3 serving (1 changed, 0 new, 0 gone, 1 unchanged)"}}
    lines = control.status_lines(status)
    assert lines[0].startswith("/mnt/t: generation 3, recorded ")
    assert lines[1] == "serving: 2 files, 4096 bytes"
    assert lines[2].startswith("recording now: 12000 entries of /srv/data so far (asked by SIGHUP at ")
    assert lines[3].endswith("(--refresh): generation 3 serving (1 changed, 0 new, 0 gone, 1 unchanged)")
    assert lines[4:] == ["refreshes since mounted: 4", "older generations still read by open files: 1"]
