"""``tartape-mount``: the process around the FUSE file system.

This module owns every process concern and nothing else: arguments, checks
that give one clear line instead of a traceback, the index (reused or
recorded), going to the background only once the mount answers, signals,
systemd notification, and unmounting on the way out.

Background mode works like sshfs and rclone mount: the command re-executes
itself in the foreground as a child in a new session, handing it the write end
of a pipe. The child mounts, checks that the mount answers, writes ``ready``
(or one line saying why it could not) and closes its end; the parent relays
that and exits 0 or 1. So when ``tartape-mount SRC MNT`` returns 0, the archive
is readable.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import stat
import subprocess
import sys
import threading
from typing import NoReturn, Sequence

from . import __version__
from .process import (OneLineParser, Readiness, duration_argument, encryption_arguments, log_for_mount,
                      recipients_of, size_argument)
from .record import check_sources
from .errors import ControlError, UsageError, show_path, show_text
from .mountinfo import FSTYPE, mounted_fstype

log = logging.getLogger("tartapefs.mount")

PROG = "tartape-mount"
# How long a mount found on the mount point has to answer before it counts as hung.
PROBE_TIMEOUT_S = 5.0
FUSE_DEVICE = "/dev/fuse"
# Options that must not reach libfuse: 'max_read=' breaks the pyfuse3 session
# (init mismatch), and the archive is read-only by nature.
REFUSED_OPTIONS = {"max_read": "breaks pyfuse3 mounts", "rw": "the archive is read-only"}


# -- arguments ------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # One line per usage error (an unknown option too), as for every other mistake.
    p = OneLineParser(
        prog=PROG,
        description="Mount SRC as a read-only TAR file at MOUNTPOINT/NAME.",
        epilog=f"Unmount with: {PROG} -u MOUNTPOINT. Refresh with: {PROG} --refresh MOUNTPOINT (or SIGHUP).",
    )
    p.add_argument("paths", nargs="*", metavar="SRC... MOUNTPOINT",
                   help="folder(s) to present as tar archives, one index each, then the empty folder to mount on")
    p.add_argument("-u", "--unmount", metavar="MOUNTPOINT", help="unmount MOUNTPOINT and exit")
    p.add_argument("--refresh", metavar="MOUNTPOINT",
                   help="record the folders of the mount at MOUNTPOINT again and serve the new archives "
                        "to new opens (open files keep theirs); waits for the switch")
    p.add_argument("--status", metavar="MOUNTPOINT",
                   help="show the generation MOUNTPOINT serves, a refresh under way, and the last one")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                   help="FUSE mount options, e.g. allow_other")
    p.add_argument("--name", help="file name of the archive of one folder (default: dataset.tar)")
    p.add_argument("--shard-size", metavar="SIZE", type=size_argument("--shard-size"),
                   help="serve WebDataset shards of at most SIZE (10G, 512MiB) and NAME.wids.json")
    p.add_argument("--shard-members", metavar="N", type=int, help="serve shards of at most N members")
    p.add_argument("--split", metavar="SIZE", type=size_argument("--split"),
                   help="serve each archive as volumes of SIZE bytes: NAME.001, NAME.002...")
    encryption_arguments(p, "serve")
    p.add_argument("--index-member", action="store_true",
                   help="end each archive with its index member, STEM.tarindex.csv (for tartape extract)")
    p.add_argument("--ratarmount-index", action="store_true",
                   help="serve ratarmount's index of each archive beside it: NAME.index.sqlite")
    p.add_argument("--index", metavar="PATH", help="index file (default: SRC/.tartape/index.db)")
    p.add_argument("--rescan", action="store_true", help="record the source again even if the index is valid")
    p.add_argument("--refresh-every", metavar="DURATION", type=duration_argument("--refresh-every"),
                   help="record again every DURATION (30s, 10m, 1h) and switch when something changed")
    p.add_argument("--direct-io", action="store_true",
                   help="bypass the page cache: each read() reaches the daemon at its own size; faster "
                        "for 1 MiB reads, much slower for tar's 10 KiB records (docs/BENCHMARKS.md)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="DEBUG, INFO (default), WARNING or ERROR, any case")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--log-file", metavar="PATH",
                   help="log here (default: stderr in the foreground, syslog in the background)")
    # Internal: set by the background parent for its child.
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    commands = [flag for flag, value in (("-u", args.unmount), ("--refresh", args.refresh),
                                         ("--status", args.status)) if value is not None]
    if commands:
        if args.paths or len(commands) > 1:
            parser.error(f"{commands[0]} takes only the mount point")
        return args
    if len(args.paths) < 2:
        parser.error("SRC and MOUNTPOINT are required (or -u MOUNTPOINT)")
    if args.name is not None and ("/" in args.name or args.name in ("", ".", "..")):
        parser.error(f"--name {args.name!r}: must be a plain file name")
    if args.shard_members is not None and args.shard_members < 1:
        parser.error(f"--shard-members {args.shard_members}: must be at least 1")
    if args.name is not None and (args.shard_size or args.shard_members):
        parser.error("--name: shards are named after their folder (NAME-000000.tar); drop --name")
    if args.index is not None and len(args.paths) > 2:
        parser.error("--index: one index per folder; give --index with one SRC only")
    *srcs, mountpoint = args.paths
    # Absolute paths: the daemon leaves the working directory (it must not
    # keep the caller's folder busy).
    args.srcs = [os.path.abspath(src) for src in srcs]
    args.src = args.srcs[0]
    args.mountpoint = os.path.abspath(mountpoint)
    if args.index is not None:
        args.index = os.path.abspath(args.index)
    if args.log_file is not None:
        args.log_file = os.path.abspath(args.log_file)
    args.recipients = None  # read by main() with the other checks, so a bad one is one line
    return args


def fuse_options(args: argparse.Namespace) -> set[str]:
    """The option set for ``pyfuse3.init``: read-only and private unless the
    user asks (``-o allow_other``), named so ``mount`` shows tartapefs."""
    options = {"ro", "default_permissions", "nosuid", "nodev", "fsname=tartapefs", "subtype=tartapefs"}
    for group in args.options:
        for opt in filter(None, (o.strip() for o in group.split(","))):
            key = opt.split("=", 1)[0]
            if key in REFUSED_OPTIONS:
                raise UsageError(f"-o {opt}: not supported ({REFUSED_OPTIONS[key]})")
            options.add(opt)
    return options


# -- checks -----------------------------------------------------------------


def _canonical(path: str) -> str:
    # Resolve symlinks in the parent only: the mount point itself may be a
    # dead FUSE mount that cannot be stat'ed.
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _stat_folder(path: str, role: str) -> None:
    """Raise UsageError unless ``path`` is an existing folder; ``role`` names
    it in the message ("source", "mount point")."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: {role} does not exist") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot use {role} ({err.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: {role} is not a folder")


def check_source(src: str) -> None:
    _stat_folder(src, "source")
    if not os.access(src, os.R_OK | os.X_OK):
        raise UsageError(f"{src}: source cannot be read (permission denied)")


def check_fuse_modules() -> None:
    """Raise UsageError unless pyfuse3 and trio can be imported (``pip install .``
    without the fuse extra installs this command but not them)."""
    for module in ("pyfuse3", "trio"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"{module} is not installed: mounting needs the fuse extra "
                             "(pip install 'tartapefs[fuse]', which builds against libfuse3-dev)")


def check_fuse_device(device: str = FUSE_DEVICE) -> None:
    """Raise UsageError unless this process can open the FUSE device.

    libfuse 3 opens it before anything else and, when that is refused, fails
    without trying fusermount3: a user then got a libfuse line and "mounting
    failed". Root always passes (libfuse reports anything stranger itself).
    """
    if not os.path.exists(device):
        raise UsageError(f"{device}: no such device: this kernel has no FUSE (try: modprobe fuse)")
    if os.geteuid() != 0 and not os.access(device, os.R_OK | os.W_OK):
        raise UsageError(
            f"{device}: permission denied: mounting as a user needs read and write access to it "
            f"(most systems give every user that: chmod 0666 {device}), or mount as root"
        )


def check_mountpoint(mnt: str, src: str) -> None:
    """Raise UsageError unless ``mnt`` is a folder we can mount on; clear a
    stale tartapefs mount (daemon killed) on the way."""
    canonical = _canonical(mnt)
    fstype = mounted_fstype(canonical)
    if fstype is not None:
        _check_existing_mount(mnt, canonical, fstype)
    _stat_folder(mnt, "mount point")
    real_src = os.path.realpath(src)
    if real_src == canonical or real_src.startswith(canonical + os.sep):
        # The daemon would read its sources through its own mount: deadlock.
        raise UsageError(f"{mnt}: mount point would hide the source folder {src}")
    try:
        with os.scandir(mnt) as entries:
            empty = next(entries, None) is None
    except OSError as err:
        raise UsageError(f"{mnt}: cannot use mount point ({err.strerror})") from None
    if not empty:
        # fuse3 would mount anyway, but the files would be hidden while mounted.
        raise UsageError(f"{mnt}: mount point is not empty (its files would be hidden)")


def _statfs_answer(mnt: str, timeout: float = PROBE_TIMEOUT_S) -> OSError | None:
    """``os.statvfs(mnt)``'s error, None if it answered; raises TimeoutError when
    nothing answers within ``timeout`` seconds. statfs, not stat: the kernel answers
    stat from its attribute cache even when the daemon behind the mount is dead.
    The call runs in a thread because a stopped or hung daemon never answers it."""
    answer: list[OSError | None] = []

    def probe() -> None:
        try:
            os.statvfs(mnt)
            answer.append(None)
        except OSError as err:
            answer.append(err)

    # A daemon thread: if the mount never answers, it must not keep us from exiting.
    worker = threading.Thread(target=probe, name="statfs-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not answer:
        raise TimeoutError
    return answer[0]


def _check_existing_mount(mnt: str, canonical: str, fstype: str) -> None:
    try:
        err = _statfs_answer(mnt)
    except TimeoutError:
        raise UsageError(
            f"{mnt}: already mounted ({fstype}), but nothing answers on it for "
            f"{PROBE_TIMEOUT_S:g} s (its daemon is stopped or hung); "
            f"detach it with: fusermount3 -uz {mnt}"
        ) from None
    if err is not None:
        if err.errno != errno.ENOTCONN:
            raise UsageError(f"{mnt}: cannot use mount point ({err.strerror})") from None
        if fstype != FSTYPE:
            raise UsageError(
                f"{mnt}: stale {fstype} mount (transport endpoint is not connected); "
                f"run: fusermount3 -uz {mnt}"
            ) from None
        # Our own daemon died (kill -9): nothing serves this mount, so
        # detaching it loses nothing.
        log.warning("%s: clearing stale mount left by a dead tartape-mount", mnt)
        complaint = _fusermount(canonical, lazy=True)
        if complaint is not None:
            raise UsageError(f"{mnt}: stale mount could not be cleared ({complaint}); "
                             f"run: fusermount3 -uz {mnt}") from None
        return
    how = f": {PROG} -u {mnt}" if fstype == FSTYPE else ""
    raise UsageError(f"{mnt}: already mounted ({fstype}); unmount it first{how}")


def _fusermount(mnt: str, lazy: bool = False) -> str | None:
    """Unmount with fusermount3; None on success, else its one-line complaint."""
    cmd = ["fusermount3", "-uz" if lazy else "-u", mnt]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        return "fusermount3 not found (install the fuse3 package)"
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]


def unmount_command(mnt: str) -> int:
    """``tartape-mount -u MNT``: unmount; the daemon then exits by itself."""
    mnt = os.path.abspath(mnt)
    fstype = mounted_fstype(_canonical(mnt))
    if fstype is None:
        raise UsageError(f"{mnt}: not mounted")
    if fstype != FSTYPE:
        # As root fusermount3 -u unmounts anything: a typo must not take a disk away.
        raise UsageError(f"{mnt}: a {fstype.removeprefix('fuse.')} mount, not a tartapefs one; "
                         f"{PROG} -u unmounts only tartapefs mounts")
    complaint = _fusermount(mnt)
    if complaint is not None:
        raise UsageError(f"{mnt}: cannot unmount: {complaint}")
    return 0


# -- background parent --------------------------------------------------------


def _child_argv(args: argparse.Namespace, ready_fd: int) -> list[str]:
    argv = [sys.executable, "-m", "tartapefs.mount", *args.srcs, args.mountpoint, "--foreground",
            f"--ready-fd={ready_fd}", f"--log-level={args.log_level}"]
    argv += [f"-o{group}" for group in args.options]
    for flag, value in (("--index", args.index), ("--log-file", args.log_file), ("--name", args.name),
                        ("--shard-size", args.shard_size), ("--shard-members", args.shard_members),
                        ("--split", args.split), ("--refresh-every", args.refresh_every)):
        if value is not None:
            argv.append(f"{flag}={value}")
    for flag, on in (("--rescan", args.rescan), ("--direct-io", args.direct_io),
                     ("--index-member", args.index_member), ("--ratarmount-index", args.ratarmount_index)):
        if on:
            argv.append(flag)
    # The recipients as read here (files included): the daemon never reads the files again.
    argv += [f"--encrypt-to={r}" for r in args.recipients or ()]
    return argv


def run_in_background(args: argparse.Namespace) -> int:
    """Start the daemon and return once it serves (0) or has said why not (1)."""
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            _child_argv(args, write_end),
            pass_fds=(write_end,),
            start_new_session=True,  # survives the caller's terminal and Ctrl-C
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
        )
    except OSError as err:  # the interpreter cannot be run again (gone, or not ours to run)
        os.close(read_end)
        os.close(write_end)
        print(f"{PROG}: {sys.executable}: cannot start the background daemon ({err.strerror}); "
              f"try --foreground", file=sys.stderr)
        return 1
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.readline().decode(errors="replace").rstrip("\n")
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 130
    if answer == "ready":
        return 0
    if answer.startswith("error "):
        print(f"{PROG}: {answer[len('error '):]}", file=sys.stderr)
        child.wait()
        return 1
    status = child.wait()
    print(f"{PROG}: {show_path(args.mountpoint)}: daemon exited with status {status} before the mount was ready",
          file=sys.stderr)
    return 1


# -- entry point ----------------------------------------------------------------


def _die(message: str) -> NoReturn:
    print(f"{PROG}: {show_text(message)}", file=sys.stderr)
    sys.exit(1)


def control_command(mnt: str, command: str) -> int:
    """``tartape-mount --refresh/--status MNT``: ask the daemon, print its answer.
    0 when the refresh switched or found nothing to switch, 1 when it failed."""
    from . import control

    mnt = os.path.abspath(mnt)
    for answer in control.ask(mnt, command):
        if "status" in answer:
            print("\n".join(show_text(line) for line in control.status_lines(answer["status"])))
            return 0
        if "message" in answer:
            ok = bool(answer.get("ok"))
            print(f"{PROG}: {show_path(mnt)}: {show_text(str(answer['message']))}",
                  file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
    raise ControlError(f"{show_path(mnt)}: the daemon closed the connection without an answer (did it stop?)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.unmount is not None:
        try:
            return unmount_command(args.unmount)
        except UsageError as err:
            _die(str(err))
    if args.refresh is not None or args.status is not None:
        try:
            return control_command(args.refresh or args.status, "refresh" if args.refresh else "status")
        except ControlError as err:
            _die(str(err))
        except KeyboardInterrupt:
            _die("interrupted (a refresh already asked for goes on)")
    log_for_mount(PROG, args.mountpoint, args.log_level, args.log_file,
                  quiet=args.ready_fd is not None or not args.foreground)
    readiness = Readiness(args.ready_fd, PROG)
    try:
        # Checked before anything starts, so mistakes get one line from the
        # command the user typed (the background child checks again: cheap).
        for src in args.srcs:
            check_source(src)
            check_mountpoint(args.mountpoint, src)
        check_sources(args.srcs)
        args.recipients = recipients_of(args)
        options = fuse_options(args)
        check_fuse_modules()
        check_fuse_device()
    except UsageError as err:
        readiness.failed(str(err))
        return 1
    if not args.foreground and args.ready_fd is None:
        return run_in_background(args)
    from .daemon import run_daemon  # pyfuse3 and trio only where we mount

    return run_daemon(args, options, readiness)


if __name__ == "__main__":
    sys.exit(main())
