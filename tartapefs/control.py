"""The control channel of a mounted daemon: ``tartape-mount --refresh/--status MNT``.

One Unix stream socket per mount, in a private runtime folder of the mounting
user: ``/run/tartapefs/`` for root, ``$XDG_RUNTIME_DIR/tartapefs/`` for other
users (``~/.local/state/tartapefs/run/`` without one). The folder is made
``0700`` and checked on every use through a descriptor opened without
following a symlink: it must be a real folder owned by this user with no
access for anyone else, or the channel is refused in one line. The socket is
named after the mount point (a hash of its real path), so nothing depends on
what SRC or the mount point hold. The daemon answers only its own user and
root, by the peer's credentials (``SO_PEERCRED``), whatever the socket's mode.

Protocol: the client sends one line, ``refresh`` or ``status``; the daemon
answers with JSON lines (``{"ok": ..., "message": ...}`` for a refresh, once
it has switched or failed; ``{"status": {...}}`` for a status). This module
holds the names, the checks and the client; the server is the daemon's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator

from .errors import ControlError, counted
from .mountinfo import FSTYPE, mounted_fstype
from .record import state_dir

COMMANDS = ("refresh", "status")
# A request is one short word; an answer line is at most a status of a few hundred bytes.
LINE_MAX = 1 << 16
_PEERCRED = struct.Struct("3i")


def canonical(mnt: str) -> str:
    """The mount point as the kernel lists it: symlinks resolved in its parent only
    (the mount point itself may be a dead mount that cannot be resolved)."""
    mnt = os.path.abspath(mnt)
    return os.path.join(os.path.realpath(os.path.dirname(mnt)), os.path.basename(mnt))


def runtime_dir() -> str:
    """This user's folder for control sockets (see the module)."""
    if os.geteuid() == 0:
        return "/run/tartapefs"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "tartapefs")
    return os.path.join(state_dir(), "run")


def socket_name(mnt: str) -> str:
    """The socket's file name for the mount point ``mnt``."""
    return hashlib.sha256(os.fsencode(canonical(mnt))).hexdigest()[:32] + ".sock"


def open_private_dir(path: str, create: bool) -> int:
    """A descriptor of the folder ``path``, which must be a folder of this user's with
    no access for group or others (made ``0700`` when ``create`` and missing; its
    parents too, ``0700``, when they are this user's state folder). ControlError
    otherwise: a planted symlink, another owner, or a mode open to others."""
    if create:
        try:
            if path.startswith(state_dir() + os.sep):
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise ControlError(f"{path}: cannot create the control folder ({err.strerror})") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ControlError(f"{path}: no control folder (no tartapefs daemon of this user runs)") from None
    except OSError as err:
        reason = "a symlink, not a folder" if err.errno in (errno.ELOOP, errno.ENOTDIR) else err.strerror
        raise ControlError(f"{path}: cannot use the control folder ({reason})") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise ControlError(f"{path}: control folder not private (owner uid {st.st_uid}, mode "
                           f"{stat.S_IMODE(st.st_mode):04o}; must be this user's, 0700): remove it")
    return fd


def fd_path(dir_fd: int, name: str) -> str:
    """A path to ``name`` inside the folder ``dir_fd`` that resolves through that
    descriptor (the folder checked), short enough for a socket address."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of the Unix socket ``sock``."""
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


def allowed(uid: int) -> bool:
    """Whether a peer with ``uid`` may control this daemon: its own user, and root."""
    return uid in (os.geteuid(), 0)


def ask(mnt: str, command: str) -> Iterator[dict]:
    """Send ``command`` to the daemon serving ``mnt`` and yield its answers (dicts).
    Waits as long as the daemon takes (a refresh records first). ControlError in
    one line when there is no tartapefs mount there, no daemon answers, or the
    daemon refuses."""
    where = canonical(mnt)
    if mounted_fstype(where) != FSTYPE:
        raise ControlError(f"{mnt}: not a tartapefs mount")
    dir_fd = open_private_dir(runtime_dir(), create=False)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(fd_path(dir_fd, socket_name(where)))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise ControlError(f"{mnt}: its daemon has no control socket in {runtime_dir()} "
                               f"(mounted by another user, or by an older tartapefs)") from None
        except OSError as err:
            sock.close()
            raise ControlError(f"{mnt}: cannot reach its daemon ({err.strerror})") from None
    finally:
        os.close(dir_fd)
    with sock, sock.makefile("rb") as answers:
        try:
            sock.sendall(command.encode() + b"\n")
        except OSError:
            pass  # a daemon that refuses may close first: its answer says why
        while True:
            try:
                line = answers.readline(LINE_MAX)
            except OSError as err:
                raise ControlError(f"{mnt}: the daemon's answer was cut ({err.strerror})") from None
            if not line:
                return
            try:
                answer = json.loads(line)
            except ValueError:
                raise ControlError(f"{mnt}: the daemon answered something else than tartapefs does") from None
            if "refused" in answer:
                raise ControlError(f"{mnt}: {answer['refused']}")
            yield answer


def status_lines(status: dict) -> list[str]:
    """A daemon's status (``Refresher.status()``) for people: one fact per line."""
    lines = [
        f"{status['mountpoint']}: generation {status['generation']}, recorded {_when(status['recorded_at'])}",
        f"serving: {counted(status['archives'], 'file')}, {counted(status['bytes'], 'byte')}",
    ]
    running = status.get("recording")
    if running:
        lines.append(f"recording now: {counted(running['entries'], 'entry', 'entries')} of "
                     f"{running['folder'] or '...'} so far "
                     f"(asked by {running['why']} at {_when(running['started'])})")
    else:
        lines.append("recording now: nothing")
    last = status.get("last")
    if last:
        lines.append(f"last refresh: {_when(last['ended'])} ({last['why']}): {last['message']}")
    else:
        lines.append("last refresh: none since it was mounted")
    lines.append(f"refreshes since mounted: {status['refreshes']}")
    if status.get("older_generations_open"):
        lines.append(f"older generations still read by open files: {status['older_generations_open']}")
    return lines


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))
