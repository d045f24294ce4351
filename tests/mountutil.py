"""Real mounts for tests: start ``tartape-mount``, wait for it, and always clean up.

Every mount made through :class:`Mounts` is unmounted with ``fusermount3 -u``
(then ``-uz`` if busy) and its daemon killed by pid when the test ends, failed
or not, so no mount or daemon outlives the suite.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

NAME = "dataset.tar"
# Whether this machine can make real mounts (root, /dev/fuse, fusermount3).
CAN_MOUNT = bool(os.path.exists("/dev/fuse") and shutil.which("fusermount3") and os.geteuid() == 0)
# Marks a test (or, as pytestmark, a module) that makes real mounts: its tier is `mount`, and
# tests/conftest.py skips it where CAN_MOUNT is false. Only tests that mount carry it.
NEEDS_MOUNT = pytest.mark.mount
NOBODY = 65534  # uid and gid of an unprivileged user
# Generous: a loaded CI machine may be slow to mount; this is a deadline, not a timing check.
DEADLINE_S = 60.0
# What must answer at once (a read of a small tree, statfs) and is hung past this: far below the
# kernel's lease break time (45 s), far above what a loaded machine takes. A deadline, not a timing.
HANG_S = 20.0


def _tool(script: str, module: str) -> list[str]:
    """The console script installed next to this Python, else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", module]


TARTAPE_MOUNT = _tool("tartape-mount", "tartapefs.mount")
TARTAPE = _tool("tartape", "tartapefs.cli")


def daemon_env() -> dict[str, str]:
    # A test run under systemd must not make our daemons notify the runner's unit.
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}


@contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at the existing folder ``path`` (root only), always unmounted:
    lazily, so that a file a failed test left open cannot keep it mounted."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tartapefs-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_mount_cli(*args: str | Path, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """``tartape-mount ARGS`` to completion (background mode returns once ready)."""
    return subprocess.run(
        [*TARTAPE_MOUNT, *map(str, args)], capture_output=True, text=True,
        env=daemon_env(), timeout=timeout, stdin=subprocess.DEVNULL,
    )


# Python code that loads every module of the package (the programs import most of them only
# when a command needs them), for a test that drops to nobody in the same process: nobody may
# not be able to read the interpreter's files. The daemon's (pyfuse3, trio) are left out.
PRELOAD = ("import importlib, pkgutil, tartapefs; [importlib.import_module('tartapefs.' + m.name) "
           "for m in pkgutil.iter_modules(tartapefs.__path__) if m.name != 'daemon']; ")


def run_as_nobody(module: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``python -m module ARGS`` as user nobody. The module, its parser and the package's
    modules are loaded first, as root (see PRELOAD)."""
    code = (f"import os, sys; from {module} import main, _parser; _parser(); {PRELOAD}"
            f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, cwd="/", env=daemon_env(), timeout=DEADLINE_S)


def bounded(argv: list, timeout: float = HANG_S, on_hang=None) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion, output captured as text; one that outlives ``timeout``
    fails the test as hung. ``on_hang`` is called first: a reader waiting for a FUSE daemon
    that hangs or loops cannot even be killed until that daemon is stopped."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="backslashreplace")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_hang is not None:
            on_hang()
        proc.kill()
        proc.communicate()
        pytest.fail(f"hung: {[str(a)[:40] for a in argv[:5]]} did not finish within {timeout:g} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(done: subprocess.CompletedProcess) -> str:
    """The one line on stderr of a command that failed as it should: non-zero exit, no
    traceback (text output, as :func:`bounded` gives)."""
    assert done.returncode != 0, str(done.stdout)[:400]
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def as_nobody(*argv: str | Path) -> subprocess.CompletedProcess:
    """``argv`` run as user nobody (through ``setpriv``), output captured."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           *map(str, argv)], capture_output=True, timeout=DEADLINE_S, cwd="/")


def stream_bytes(src: Path) -> bytes:
    """The archive as ``tartape stream SRC`` writes it: the reference bytes."""
    return subprocess.run([*TARTAPE, "stream", str(src)], capture_output=True, check=True).stdout


def mounted_fstype(path: Path) -> str | None:
    from tartapefs.mount import mounted_fstype as lookup

    return lookup(os.path.join(os.path.realpath(path.parent), path.name))


def processes() -> Iterator[tuple[int, int, list[bytes]]]:
    """``(pid, parent pid, argv)`` of every process there is (those gone meanwhile skipped)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
            parent = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry), parent, argv


def daemon_pids(mnt: Path) -> list[int]:
    """Pids of background daemons serving ``mnt`` (found by their command line)."""
    return [pid for pid, _, argv in processes()
            if os.fsencode(str(mnt)) in argv and any(a.startswith(b"--ready-fd") for a in argv)]


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone as far as serving goes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def force_unmount(mnt: Path) -> None:
    """Unmount whatever tartapefs mount is at ``mnt``: -u, then lazily."""
    if mounted_fstype(mnt) is None:
        return
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


@dataclass
class Mount:
    src: Path
    mnt: Path
    log: Path
    proc: subprocess.Popen | None = None  # foreground daemon, when started with -f
    pids: list[int] = field(default_factory=list)  # background daemons
    name: str = NAME  # the file whose appearance says the mount is up

    @property
    def file(self) -> Path:
        return self.mnt / self.name

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Unmount and make sure the daemon is gone; safe to call twice."""
        force_unmount(self.mnt)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids:
            if not pid_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        force_unmount(self.mnt)


class Mounts:
    """Starts mounts for one test (or module) and stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Mount] = []

    def _new(self, src: Path, mnt: Path | None) -> Mount:
        if mnt is None:
            mnt = self.base / f"mnt{len(self.started)}"
            mnt.mkdir()
        m = Mount(src, mnt, self.base / f"mount{len(self.started)}.log")
        self.started.append(m)
        return m

    def foreground(self, src: Path, mnt: Path | None = None, *args: str, name: str = NAME,
                   more: tuple[Path, ...] = ()) -> Mount:
        """``tartape-mount -f`` as a child process; returns once the file ``name``
        answers. ``more``: further source folders before the mount point."""
        m = self._new(src, mnt)
        m.name = name
        m.proc = subprocess.Popen(
            [*TARTAPE_MOUNT, str(src), *map(str, more), str(m.mnt), "-f", "--log-file", str(m.log), *args],
            env=daemon_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def up() -> bool:
            if m.proc.poll() is not None:
                pytest.fail(f"tartape-mount exited {m.proc.returncode}: "
                            f"{m.proc.stderr.read().decode(errors='replace')}{m.log_text()}")
            # The daemon logs "serving" once it has seen its own mount answer: after
            # that line it writes nothing more unless something happens.
            return (mounted_fstype(m.mnt) == "fuse.tartapefs" and m.file.exists()
                    and " serving " in m.log_text())

        wait_until(up, f"mount of {src} at {m.mnt}")
        return m

    def background(self, src: Path, mnt: Path | None = None, *args: str, log_file: bool = True) -> Mount:
        """``tartape-mount`` as users run it: returns when the command has exited 0.
        ``log_file=False`` leaves the daemon its default log destination."""
        m, done = self.attempt(src, mnt, *args, log_file=log_file)
        assert done.returncode == 0, done.stderr
        return m

    def attempt(self, src: Path, mnt: Path | None = None, *args: str, log_file: bool = True,
                timeout: float = DEADLINE_S) -> tuple[Mount, subprocess.CompletedProcess]:
        """``tartape-mount`` in the background, whether it mounts or refuses; whatever it
        mounted is stopped at the end like every other mount."""
        m = self._new(src, mnt)
        done = run_mount_cli(src, m.mnt, *(("--log-file", m.log) if log_file else ()), *args, timeout=timeout)
        m.pids = daemon_pids(m.mnt)
        return m, done

    def stop_all(self) -> None:
        """Stop every mount, even if stopping one of them fails."""
        failures = []
        for m in reversed(self.started):
            try:
                m.stop()
            except Exception as err:  # keep going: the others must not outlive the test
                failures.append(f"{m.mnt}: {err!r}")
        assert not failures, failures


def pread_errno(path: Path, offset: int, size: int) -> int | None:
    """errno of ``os.pread`` on a fresh descriptor, or None if it succeeded."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, size, offset)
    except OSError as err:
        return err.errno
    finally:
        os.close(fd)
    return None


def is_stale(mnt: Path) -> bool:
    try:
        os.statvfs(mnt)  # never answered from a cache, unlike stat
    except OSError as err:
        return err.errno == errno.ENOTCONN
    return False
