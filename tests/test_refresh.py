"""Refreshing a mounted folder without unmounting: real mounts, real clients.

A refresh records the folders again in a child process while the daemon serves, then
switches every name at once: handles opened before keep reading the generation they
opened, every byte equal to that generation's stream; opens, stats and listings after the
refresh command returns see the new one. The reference bytes are ``tartape stream``'s,
taken before and after. Waits have deadlines only (DEADLINE_S): a hang fails, nothing
asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from nginxutil import NGINX, nginx  # noqa: F401  (nginx: the fixture)
from mountutil import (DEADLINE_S, NAME, NEEDS_MOUNT, NOBODY, TARTAPE_MOUNT, as_nobody, daemon_env, force_unmount,
                       mounted_fstype, pid_gone, processes, run_as_nobody, run_mount_cli, stream_bytes,
                       wait_until)
from trees import _Builder, build_small_tree, content

pytestmark = NEEDS_MOUNT


# -- helpers ------------------------------------------------------------------------------------


def refresh(mnt: Path) -> subprocess.CompletedProcess:
    return run_mount_cli("--refresh", mnt)


def status(mnt: Path) -> str:
    done = run_mount_cli("--status", mnt)
    assert done.returncode == 0, done.stderr
    return done.stdout


def generation(mnt: Path) -> int:
    return int(re.search(r": generation (\d+),", status(mnt)).group(1))


def refreshes(mnt: Path) -> int:
    return int(re.search(r"refreshes since mounted: (\d+)", status(mnt)).group(1))


def one_line(done: subprocess.CompletedProcess) -> str:
    """The one line a --refresh printed (stdout on success, stderr on failure)."""
    out = (done.stdout + done.stderr).strip().splitlines()
    assert len(out) == 1 and "Traceback" not in done.stderr, (done.stdout, done.stderr)
    return out[0]


def add_file(src: Path, rel: str, size: int) -> None:
    """A new file appears whole (written beside the tree, then renamed in): a refresh in
    between never records it half written."""
    outside = src.parent / f".incoming-{os.path.basename(rel)}"
    outside.write_bytes(content(rel.encode(), size))
    os.rename(outside, src / rel)


def build_tree(parent: Path, name: str = "data") -> Path:
    """Members spanning many FUSE requests (a 3 MiB file), small ones around it."""
    root = parent / name
    b = _Builder(root)
    b.dir(b"sub")
    for rel, size in ((b"a.txt", 1000), (b"sub/big.bin", 3 * (1 << 20) + 7), (b"sub/c.txt", 513),
                      (b"z.txt", 3)):
        b.file(rel, content(rel, size))
    b.finish()
    return root


def recorders(daemon: int) -> list[int]:
    """Pids of the refresh recorders the daemon ``daemon`` is running."""
    return [pid for pid, parent, argv in processes() if parent == daemon and b"tartapefs.worker" in argv]


@contextmanager
def refresh_held(m, when=lambda: True):
    """``tartape-mount --refresh`` started in the background, its recorder stopped (SIGSTOP)
    as soon as ``when()`` holds. Yields ``(client, recorder pid)``; on the way out the
    recorder is continued (if still there) and the client reaped."""
    client = subprocess.Popen(_mount_cmd("--refresh", m.mnt), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=daemon_env())
    child = None
    try:
        wait_until(lambda: recorders(m.proc.pid), "the refresh's recorder")
        [child] = recorders(m.proc.pid)
        deadline = time.monotonic() + DEADLINE_S
        while not when():  # polled tightly: the recorder must not get past the moment
            assert time.monotonic() < deadline, "gave up waiting: the moment to stop the recorder"
            time.sleep(0.001)
        os.kill(child, signal.SIGSTOP)
        yield client, child
    finally:
        if child is not None and not pid_gone(child):
            os.kill(child, signal.SIGCONT)
        if client.returncode is None:
            try:
                client.communicate(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                client.kill()
                client.communicate()


def _mount_cmd(*args: str | Path) -> list[str]:
    return [*TARTAPE_MOUNT, *map(str, args)]


def open_index_files(pid: int) -> list[str]:
    """Index files the process ``pid`` holds open (a renamed-over one shows as deleted)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "index.db" in target:
            found.append(target)
    return found


# -- who sees what -----------------------------------------------------------------------------


def test_a_handle_opened_before_a_refresh_reads_the_old_archive_and_new_opens_read_the_new(mounts, tmp_path):
    src = build_tree(tmp_path)
    old = stream_bytes(src)
    m = mounts.foreground(src)
    held = open(m.file, "rb")
    try:
        head = held.read(200_000)  # pages of the old archive now in the kernel's cache
        old_ino = os.fstat(held.fileno()).st_ino
        add_file(src, "0-first.bin", 70_000)  # sorts first: every later member moves
        done = refresh(m.mnt)
        assert done.returncode == 0 and "generation 2 serving" in one_line(done)
        st = os.stat(m.file)  # right after the command returned
        new = stream_bytes(src)
        assert st.st_size == len(new) != len(old)
        assert st.st_ino != old_ino and st.st_mtime >= os.fstat(held.fileno()).st_mtime
        assert m.file.read_bytes() == new  # a new open: the new generation, no old page
        cat = subprocess.run(["cat", str(m.file)], capture_output=True, timeout=DEADLINE_S)
        assert cat.stdout == new
        assert os.listdir(m.mnt) == [NAME]
        # The old handle: the whole old archive, as it was, to its last byte.
        assert os.fstat(held.fileno()).st_size == len(old)
        assert head + held.read() == old
        assert os.pread(held.fileno(), 4096, len(old) - 4096) == old[-4096:]
    finally:
        held.close()
    # Once its last reader is gone, the old generation's index (renamed over) is closed.
    wait_until(lambda: not any("(deleted)" in f for f in open_index_files(m.proc.pid)),
               "the old generation's index closed")
    # The current one only (the C read loop, where built, holds it by a descriptor of its own).
    assert set(open_index_files(m.proc.pid)) == {str(src / ".tartape" / "index.db")}


def test_a_member_changed_under_an_old_handle_fails_with_eio_never_new_bytes(mounts, tmp_path):
    src = build_tree(tmp_path)
    old = stream_bytes(src)
    m = mounts.foreground(src, None, "--direct-io")  # each read reaches the daemon
    with open(m.file, "rb") as held:
        (src / "z.txt").write_bytes(b"xyz!")  # z.txt is the last member: its old bytes are gone
        assert refresh(m.mnt).returncode == 0
        where = old.rindex(content(b"z.txt", 3))
        with pytest.raises(OSError) as err:
            os.pread(held.fileno(), 512, where - 512)
        assert err.value.errno == 5  # EIO
        assert os.pread(held.fileno(), 1000, 512) == old[512:1512]  # the rest serves on
    assert m.file.read_bytes() == stream_bytes(src)


def test_a_refresh_of_an_unchanged_tree_switches_nothing(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    before = os.stat(m.file)
    data = m.file.read_bytes()
    cached = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(m.file)], capture_output=True, text=True)
    done = refresh(m.mnt)
    assert done.returncode == 0 and "unchanged; generation 1 keeps serving" in one_line(done)
    after = os.stat(m.file)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    # Nothing invalidated: the archive's pages are still in the kernel's cache.
    still = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(m.file)], capture_output=True, text=True)
    assert cached.returncode == still.returncode == 0 and int(still.stdout) == int(cached.stdout) > 0
    assert m.file.read_bytes() == data
    assert generation(m.mnt) == 1 and "unchanged" in status(m.mnt)


# -- failures leave the generation serving -------------------------------------------------------


def test_a_refresh_killed_halfway_leaves_the_old_generation_serving(mounts, tmp_path):
    src = build_tree(tmp_path)
    for i in range(10_000):  # a walk long enough to be caught writing its index
        (src / "sub" / f"n{i:05d}").write_bytes(b"")
    old = stream_bytes(src)
    index = src / ".tartape" / "index.db"
    index_ino = index.stat().st_ino
    m = mounts.foreground(src)
    add_file(src, "0-first.bin", 5000)

    def writing() -> bool:
        return any(p.name.endswith(".tmp") for p in index.parent.iterdir())

    with refresh_held(m, writing) as (client, child):
        # Halfway: writing its index, nothing renamed; the daemon answers meanwhile.
        assert index.stat().st_ino == index_ino
        assert "recording now: " in status(m.mnt) and "recording now: nothing" not in status(m.mnt)
        assert m.file.read_bytes() == old
        os.kill(child, signal.SIGKILL)
        out, err = client.communicate(timeout=DEADLINE_S)
    assert client.returncode == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "killed by SIGKILL" in lines[0] and "generation 1 keeps serving" in lines[0], err
    assert index.stat().st_ino == index_ino and not writing()
    assert os.stat(m.file).st_size == len(old) and m.file.read_bytes() == old
    assert generation(m.mnt) == 1 and "refresh failed" in status(m.mnt)
    assert "refresh (--refresh) failed" in m.log_text()
    # The next refresh works.
    assert refresh(m.mnt).returncode == 0 and m.file.read_bytes() == stream_bytes(src) != old


def test_a_refresh_that_cannot_record_keeps_serving_and_says_why_in_one_line(mounts, tmp_path):
    src = build_tree(tmp_path)
    old = stream_bytes(src)
    m = mounts.foreground(src)
    moved = tmp_path / "moved-away"
    os.rename(src, moved)
    try:
        done = refresh(m.mnt)
    finally:
        os.rename(moved, src)
    line = one_line(done)
    assert done.returncode == 1 and str(src) in line and "generation 1 keeps serving" in line
    assert m.file.read_bytes() == old and generation(m.mnt) == 1


def test_a_second_refresh_while_one_runs_is_refused_in_one_line(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    add_file(src, "0-first.bin", 5000)
    with refresh_held(m) as (first, child):
        second = refresh(m.mnt)
        os.kill(m.proc.pid, signal.SIGHUP)  # refused as well, and logged
        wait_until(lambda: "SIGHUP: a refresh is already running" in m.log_text(), "the SIGHUP refused")
        os.kill(child, signal.SIGCONT)
        out, _ = first.communicate(timeout=DEADLINE_S)
    assert second.returncode == 1 and "a refresh is already running" in one_line(second)
    assert first.returncode == 0 and "generation 2 serving" in out
    assert generation(m.mnt) == 2 and refreshes(m.mnt) == 1


# -- triggers -----------------------------------------------------------------------------------


def test_sighup_refreshes_and_no_longer_stops_the_daemon(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.background(src)
    [daemon] = m.pids
    add_file(src, "0-first.bin", 5000)
    os.kill(daemon, signal.SIGHUP)
    wait_until(lambda: generation(m.mnt) == 2, "generation 2 after SIGHUP")
    assert not pid_gone(daemon) and mounted_fstype(m.mnt) == "fuse.tartapefs"
    assert m.file.read_bytes() == stream_bytes(src)
    assert "(SIGHUP): generation 2 serving" in m.log_text()


def test_refresh_every_switches_once_per_change(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src, None, "--refresh-every", "1s")
    wait_until(lambda: refreshes(m.mnt) >= 2, "two periodic refreshes")
    assert generation(m.mnt) == 1  # nothing changed: nothing switched
    first_ino = os.stat(m.file).st_ino
    add_file(src, "0-first.bin", 5000)
    wait_until(lambda: generation(m.mnt) == 2, "the change switched in")
    seen = refreshes(m.mnt)
    wait_until(lambda: refreshes(m.mnt) >= seen + 2, "two more periodic refreshes")
    assert generation(m.mnt) == 2
    assert os.stat(m.file).st_ino != first_ino and m.file.read_bytes() == stream_bytes(src)
    assert m.log_text().count("generation 2 serving") == 1


def test_status_shows_the_generation_its_recording_and_the_last_refresh(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    lines = status(m.mnt).splitlines()
    assert lines[0].startswith(f"{m.mnt}: generation 1, recorded ")
    assert lines[1] == f"serving: 1 file, {len(stream_bytes(src))} bytes"
    assert "recording now: nothing" in lines and "last refresh: none since it was mounted" in lines
    add_file(src, "0-first.bin", 5000)
    assert refresh(m.mnt).returncode == 0
    text = status(m.mnt)
    assert f"{m.mnt}: generation 2, recorded " in text and "refreshes since mounted: 1" in text
    assert re.search(r"last refresh: .* \(--refresh\): generation 2 serving \(1 changed", text), text


# -- real clients ---------------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is not installed")
def test_rsync_copies_the_new_archive_after_a_refresh(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.background(src)
    dest = tmp_path / "copy"
    dest.mkdir()

    def rsync() -> list[str]:
        done = subprocess.run(["rsync", "-a", "--itemize-changes", f"{m.file}", f"{dest}/"], capture_output=True,
                              text=True, timeout=DEADLINE_S)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert rsync() and (dest / NAME).read_bytes() == stream_bytes(src)
    assert rsync() == []  # nothing changed: nothing to copy
    (src / "sub" / "c.txt").chmod(0o600)  # a mode: new bytes, same size, same newest mtime
    assert refresh(m.mnt).returncode == 0
    assert rsync() != []  # copied again: the new generation has a new mtime
    assert (dest / NAME).read_bytes() == stream_bytes(src) == m.file.read_bytes()
    assert rsync() == []


@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (Debian package nginx)")
def test_nginx_serves_the_new_archive_with_a_new_etag(world_dir, world_mounts, nginx):
    from test_http import get

    src = build_tree(world_dir)
    m = world_mounts.background(src, None, "-o", "allow_other")
    url = f"{nginx(m.mnt).url}/{NAME}"
    status1, headers1, body1 = get(url)
    assert status1 == 200 and body1 == stream_bytes(src)
    add_file(src, "0-first.bin", 70_000)
    assert refresh(m.mnt).returncode == 0
    status2, headers2, body2 = get(url)
    assert status2 == 200 and body2 == stream_bytes(src) != body1
    assert headers2["ETag"] != headers1["ETag"] and headers2["Last-Modified"] >= headers1["Last-Modified"]
    assert int(headers2["Content-Length"]) == len(body2)
    # A range of the new generation, as a resuming client asks for it.
    assert get(url, "bytes=1000-1999")[2] == body2[1000:2000]
    # A client resuming its copy of the old generation (If-Range: the old ETag) gets the whole
    # new archive, never the new bytes after its old ones.
    request = urllib.request.Request(url, headers={"Range": "bytes=1000-", "If-Range": headers1["ETag"]})
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
        assert response.status == 200 and response.read() == body2


# -- several archives -----------------------------------------------------------------------------


def test_several_folders_only_the_changed_archive_gets_a_new_generation(mounts, tmp_path):
    a, b = build_tree(tmp_path, "photos"), build_tree(tmp_path, "scans")
    m = mounts.foreground(a, None, name="photos.tar", more=(b,))
    photos, scans = m.mnt / "photos.tar", m.mnt / "scans.tar"
    photos_data = photos.read_bytes()
    before = {p.name: os.stat(p).st_ino for p in (photos, scans)}
    add_file(b, "0-first.bin", 5000)
    done = refresh(m.mnt)
    assert done.returncode == 0 and "(1 changed, 0 new, 0 gone, 1 unchanged)" in one_line(done)
    assert os.stat(photos).st_ino == before["photos.tar"] and os.stat(scans).st_ino != before["scans.tar"]
    # The unchanged archive keeps its pages in the kernel's cache.
    cached = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(photos)], capture_output=True, text=True)
    assert cached.returncode == 0 and int(cached.stdout) > 0
    assert photos.read_bytes() == photos_data
    from tartapefs import Recording

    with Recording.discover(str(b)) as recording, recording.tapes()[0].reader() as reader:
        assert scans.read_bytes() == reader.read(0, reader.total_size)


def test_shards_that_vanish_and_appear_with_their_shard_list(mounts, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(12):
        (src / f"s{i:02d}.jpg").write_bytes(bytes([i]) * 2000)
    m = mounts.foreground(src, None, "--shard-members", "4", name="photos.wids.json")
    shards = sorted(p for p in os.listdir(m.mnt) if p.endswith(".tar"))
    assert len(shards) == 4  # 3 files and the folder each
    last = open(m.mnt / shards[-1], "rb")
    try:
        size = os.fstat(last.fileno()).st_size
        for i in range(6, 12):
            (src / f"s{i:02d}.jpg").unlink()
        assert refresh(m.mnt).returncode == 0
        assert sorted(p for p in os.listdir(m.mnt) if p.endswith(".tar")) == shards[:2]
        assert not (m.mnt / shards[-1]).exists()
        assert os.fstat(last.fileno()).st_size == size  # an open handle keeps its file
    finally:
        last.close()
    doc = json.loads((m.mnt / "photos.wids.json").read_bytes())
    assert [s["url"] for s in doc["shardlist"]] == shards[:2]
    for i in range(6, 15):
        add_file(src, f"s{i:02d}.jpg", 2000)
    assert refresh(m.mnt).returncode == 0
    grown = sorted(p for p in os.listdir(m.mnt) if p.endswith(".tar"))
    assert len(grown) == 5 and grown[:4] == shards
    doc = json.loads((m.mnt / "photos.wids.json").read_bytes())
    assert [s["url"] for s in doc["shardlist"]] == grown


# -- the control channel ---------------------------------------------------------------------------


def test_another_user_cannot_refresh_or_ask_the_status_of_a_mount(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    add_file(src, "0-first.bin", 5000)
    for command in ("--refresh", "--status"):
        done = run_as_nobody("tartapefs.mount", command, m.mnt)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"tartape-mount: ") and "control folder" in lines[0], lines[0]
    assert generation(m.mnt) == 1 and "refresh (" not in m.log_text()


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_daemon_answers_only_its_own_user_and_root_whatever_the_socket_allows(world_dir):
    """nobody mounts; the socket is then opened to everyone on purpose: another user is
    still refused by its credentials, root is answered."""
    from tartapefs import control
    from test_mount import fuse_device_mode

    src = build_small_tree(world_dir)
    mnt, runtime = world_dir / "mnt", world_dir / "runtime"
    for folder in (mnt, runtime):
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
    os.chmod(runtime, 0o700)
    code = ("import os, sys; from tartapefs.mount import main; import tartapefs.daemon; "
            f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); sys.exit(main(sys.argv[1:]))")
    env = {**daemon_env(), "XDG_RUNTIME_DIR": str(runtime), "HOME": str(world_dir)}
    with fuse_device_mode(0o666):
        proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(mnt), "-f", "--index",
                                 str(runtime / "index.db")], cwd="/", env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            folder = runtime / "tartapefs"
            sock_path = folder / control.socket_name(str(mnt))
            wait_until(lambda: proc.poll() is not None or sock_path.exists(), "nobody's control socket")
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert (folder.stat().st_mode & 0o777, folder.stat().st_uid) == (0o700, NOBODY)
            for opened in (runtime, folder):
                os.chmod(opened, 0o711)
            os.chmod(sock_path, 0o666)
            ask = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                   "s.sendall(b'status\\n'); print(s.makefile().readline())")
            other = subprocess.run(["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups",
                                    sys.executable, "-c", ask, str(sock_path)], capture_output=True, text=True,
                                   timeout=DEADLINE_S, cwd="/")
            assert other.returncode == 0, other.stderr
            assert "refused: uid 65533 is neither the user who mounted it nor root" in json.loads(other.stdout)["refused"]
            root = subprocess.run([sys.executable, "-c", ask, str(sock_path)], capture_output=True, text=True,
                                  timeout=DEADLINE_S)
            assert json.loads(root.stdout)["status"]["generation"] == 1
            own = as_nobody(sys.executable, "-c", ask, sock_path)
            assert own.returncode == 0 and json.loads(own.stdout)["status"]["generation"] == 1
        finally:
            force_unmount(mnt)
            try:
                # Unmounted, it leaves by itself (a SIGTERM while it is leaving would find the
                # default action back and end it before it removes its socket).
                proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=DEADLINE_S)
    assert not sock_path.exists()  # the daemon removes its socket on the way out


def test_a_mount_point_with_a_newline_in_its_name_is_shown_on_one_line(mounts, tmp_path):
    src = build_tree(tmp_path)
    mnt = tmp_path / "mnt\nforged line"
    mnt.mkdir()
    m = mounts.foreground(src, mnt)
    lines = status(m.mnt).splitlines()
    assert lines[0].startswith("mnt\\nforged line: generation 1, recorded ", len(str(tmp_path)) + 1), lines
    assert len(lines) == len(status(mounts.foreground(build_tree(tmp_path, "other")).mnt).splitlines())
    add_file(src, "0-first.bin", 5000)
    done = refresh(m.mnt)
    assert done.returncode == 0 and "mnt\\nforged line: generation 2 serving" in one_line(done)


def test_refresh_and_status_of_what_is_not_a_tartapefs_mount_are_one_line(tmp_path):
    for command in ("--refresh", "--status"):
        done = run_mount_cli(command, tmp_path)
        assert done.returncode == 1 and done.stderr.strip() == f"tartape-mount: {tmp_path}: not a tartapefs mount"
    done = run_mount_cli("--refresh", tmp_path, tmp_path)
    assert done.returncode == 2 and "takes only the mount point" in done.stderr


@pytest.mark.parametrize("value", ["soon", "0s", "10x", "-5m"])
def test_a_bad_refresh_interval_is_one_line_and_mounts_nothing(tmp_path, value):
    src = build_small_tree(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = run_mount_cli(src, mnt, "--refresh-every", value)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "--refresh-every" in lines[0], done.stderr
    assert mounted_fstype(mnt) is None


def test_unmounting_during_a_refresh_stops_its_recorder(mounts, tmp_path):
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    add_file(src, "0-first.bin", 5000)
    with refresh_held(m) as (client, child):
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=DEADLINE_S) == 0
        wait_until(lambda: pid_gone(child), "the recorder gone with its daemon")
        _, err = client.communicate(timeout=DEADLINE_S)
    assert client.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert mounted_fstype(m.mnt) is None
    assert not [p for p in (src / ".tartape").iterdir() if p.name.endswith(".tmp")]


def test_an_encrypted_mount_keeps_its_keys_until_its_archives_change(mounts, tmp_path):
    """A new recording has new keys: when the plain archive is the same, the mount keeps the
    recording it serves (same file for every client); when it changed, the new age file has
    a new inode and a later mtime, and age decrypts it to the new tar."""
    from agekit import age_decrypt, keygen
    from tartapefs import Recording

    key = keygen(tmp_path)
    src = build_tree(tmp_path)
    m = mounts.foreground(src, None, "--encrypt-to", key.public, name=NAME + ".age")
    before = os.stat(m.file)
    sealed = m.file.read_bytes()
    done = refresh(m.mnt)
    assert done.returncode == 0 and "unchanged; generation 1 keeps serving" in one_line(done)
    assert os.stat(m.file).st_ino == before.st_ino and m.file.read_bytes() == sealed
    add_file(src, "0-first.bin", 5000)
    assert refresh(m.mnt).returncode == 0
    after = os.stat(m.file)
    assert after.st_ino != before.st_ino and after.st_mtime > before.st_mtime
    opened = age_decrypt(m.file.read_bytes(), key)
    assert opened.returncode == 0, opened.stderr
    with Recording.discover(str(src)) as recording, recording.tapes()[0].reader() as reader:
        assert opened.stdout == reader.read(0, reader.total_size)


def test_an_old_generation_nobody_looks_up_again_is_let_go(mounts, tmp_path):
    """The switch only expires the kernel's lookups of the changed names (cheap); the old
    inodes it still holds are dropped right after, so the old generation's index (renamed
    over) is closed even if nobody ever looks the name up again."""
    src = build_tree(tmp_path)
    m = mounts.foreground(src)
    os.stat(m.file)  # the kernel holds the name, whatever the mount's own start did
    add_file(src, "0-first.bin", 5000)
    done = refresh(m.mnt)
    assert done.returncode == 0 and "generation 2 serving" in one_line(done)
    wait_until(lambda: not any("(deleted)" in f for f in open_index_files(m.proc.pid)),
               "the old generation's index closed")
    assert os.stat(m.file).st_size == len(stream_bytes(src))
