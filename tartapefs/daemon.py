"""The mounted process of ``tartape-mount``: open the tape, mount, serve until
a signal or an unmount, then leave nothing mounted.

Kept apart from ``mount.py`` (arguments, checks, background start) so that
pyfuse3 and trio are imported only by the process that actually mounts.
Teardown order is fixed by nesting: the FUSE loop, the signal watchers, the
refreshes (:mod:`tartapefs.refresh`) and the control channel's server
(:mod:`tartapefs.control`) live in one nursery; leaving it (normally or not)
kills a recorder under way, unmounts and closes the session, then every
generation still open closes its recordings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import stat
from typing import Any

import pyfuse3
import trio

from . import control
from .errors import ControlError, TartapeError, counted
from .fusefs import TapeFS
from .reader import tune_malloc
from .process import Progress, Readiness, detach_stdio, give_back_memory, sd_notify
from .refresh import Refresher

log = logging.getLogger("tartapefs.mount")

# SIGHUP refreshes instead (as nginx reloads its configuration).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PROG = "tartape-mount"
# Bigger kernel read-ahead turns buffered 128 KiB requests into 1 MiB ones
# (DESIGN.md, "FUSE facts"); value in KiB. Measured on a 1.1 GB tape from
# page-cached sources: dd bs=1M 0.5-0.9 -> 1.3-2.6 GB/s, cat 0.9-1.2 -> 1.4-2.7.
READ_AHEAD_KB = 1024
# Encrypted archives: a deeper read-ahead. With 1 MiB the kernel asks for the next window only
# when the reader reaches it, so the daemon's ~1.2 ms of work on a request (sealing included)
# mostly leaves the reader waiting; with 4 MiB up to four 1 MiB requests wait queued and are
# served back to back.
# Rough, on the shared 2-vCPU VM (2 GiB, dd bs=1M, six rounds): median 783 -> 839 MB/s;
# 8 and 16 MiB gave no more (docs/BENCHMARKS.md, "Encrypted archives").
ENCRYPTED_READ_AHEAD_KB = 4096
# How long a control client may take to send its one-word request.
REQUEST_TIMEOUT_S = 10.0


def open_archives(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The recordings of ``args.srcs`` (each index reused if valid and recorded with
    these options — plan, encryption recipients —, else recorded now, progress on
    stderr) and what the mount shows of them, named."""
    from .plan import PlanOptions
    from .tape import archives, record_or_reuse

    # No plan option: whatever the recording was planned with; other options than
    # recorded: record again (never serve a mismatch).
    plan = None
    if args.shard_size or args.shard_members or args.index_member or args.ratarmount_index:
        plan = PlanOptions(args.shard_size, args.shard_members, args.index_member, args.ratarmount_index)
    recordings = []
    try:
        for src in args.srcs:
            progress = Progress("recording index")
            recording = record_or_reuse(src, args.index, args.rescan, progress, plan, args.recipients)
            recordings.append(recording)
            progress.done()
            if progress.count:
                log.info("recorded %s into %s", counted(progress.count, "entry", "entries"), recording.index_path)
        return recordings, archives(recordings, args.name, args.split)
    except BaseException:
        for r in recordings:
            r.close()
        raise


def run_daemon(args: argparse.Namespace, options: set[str], readiness: Readiness) -> int:
    """Serve until stopped; 0 after a clean unmount, 1 if never mounted."""
    os.chdir("/")  # never keep the caller's folder busy
    # SIGHUP asks for a refresh once serving; until then it must not stop us either.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    tune_malloc()
    try:
        recordings, files = open_archives(args)
    except TartapeError as err:
        readiness.failed(str(err))
        return 1
    except OSError as err:
        # Not wrapped by the core (e.g. the index folder cannot be created).
        readiness.failed(f"{err.filename or args.src}: {err.strerror}")
        return 1
    # A folder recorded just now leaves the walk's memory free in the heap: give it back.
    give_back_memory()
    refresher = Refresher(args.mountpoint, args.name, args.split)
    refresher.first(recordings, files)
    try:
        fs = TapeFS({f.name: f for f in files}, direct_io=args.direct_io, on_drop=refresher.dropped)
        refresher.attach(fs)
        serving = []
        for r in recordings:
            tapes = r.tapes()
            what = (os.path.join(args.mountpoint, files[0].name) if len(files) == 1
                    else f"{args.mountpoint} ({counted(len(tapes), 'archive')} of {r.stem})")
            serving.append(f"serving {what}: {counted(sum(t.total_size for t in tapes), 'byte')}, "
                           f"{counted(r.member_count, 'member')}, from {r.source_root} (index {r.index_path})")
        args.served_name = files[0].name
        args.read_ahead_kb = ENCRYPTED_READ_AHEAD_KB if any(r.encrypted for r in recordings) else READ_AHEAD_KB
        return trio.run(serve, fs, refresher, args, options, readiness, serving)
    finally:
        refresher.close()


async def serve(fs: TapeFS, refresher: Refresher, args: argparse.Namespace, options: set[str],
                readiness: Readiness, serving: list[str]) -> int:
    try:
        pyfuse3.init(fs, args.mountpoint, options)
    except RuntimeError as err:
        # libfuse has printed its own reason on stderr just before.
        readiness.failed(f"{args.mountpoint}: mounting failed ({err}; libfuse says why above)")
        return 1
    served = os.path.join(args.mountpoint, args.served_name)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signal)
            await nursery.start(refresher.on_sighup)
            nursery.start_soon(_fuse_loop, nursery.cancel_scope)
            try:
                st = await _until_usable(served)
            except OSError as err:
                readiness.failed(f"{served}: the new mount does not answer ({err.strerror})")
                nursery.cancel_scope.cancel()
                return 1
            _tune_read_ahead(st.st_dev, args.read_ahead_kb)
            await nursery.start(refresher.run)
            await nursery.start(_control_server, refresher, args.mountpoint)
            if args.refresh_every:
                nursery.start_soon(refresher.every, args.refresh_every)
            readiness.ready(f"serving {args.served_name}")
            if args.ready_fd is not None:
                detach_stdio(PROG, args.mountpoint, args.log_file)
            # After the detach: a background daemon's log (syslog, or its file) says it serves.
            for line in serving:
                log.info("%s", line)
    finally:
        # unmount=True is harmless after an external unmount: libfuse sees the
        # dead connection and skips the umount call.
        pyfuse3.close(unmount=True)
    log.info("unmounted")
    return 0


async def _fuse_loop(scope: trio.CancelScope) -> None:
    await pyfuse3.main()
    # The loop ends on unmount (fusermount3 -u) or terminate(): stop the rest.
    scope.cancel()


async def _stop_on_signal(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received, unmounting", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            pyfuse3.terminate()
            return


async def _until_usable(path: str) -> os.stat_result:
    """stat the served file through the kernel: proves the loop answers.
    In a thread, because the answer comes from this very thread's loop."""
    return await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)


def _tune_read_ahead(dev: int, kb: int) -> None:
    """Raise the mount's kernel read-ahead to ``kb`` KiB so buffered reads arrive as 1 MiB
    requests instead of 128 KiB ones. Best effort: needs root."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as err:
        log.info("kept the default read-ahead (%s: %s)", path, err.strerror)
    else:
        log.debug("read-ahead set to %d KiB (%s)", kb, path)


# -- the control channel's server (the names, checks and client: tartapefs.control) ------------


async def _control_server(refresher: Refresher, mountpoint: str, *,
                          task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer ``tartape-mount --refresh/--status`` on this mount's socket until cancelled.
    Without a usable private folder the mount serves on, said once in the log."""
    name = control.socket_name(mountpoint)
    try:
        dir_fd = control.open_private_dir(control.runtime_dir(), create=True)
    except ControlError as err:
        log.warning("%s; --refresh and --status cannot reach this mount (SIGHUP still refreshes)", err)
        task_status.started()
        return
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            if not _clear_stale_socket(dir_fd, name):
                raise ControlError("another daemon answers there")
            await sock.bind(control.fd_path(dir_fd, name))
            ours = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
            sock.listen(16)
        except (OSError, ControlError) as err:
            log.warning("%s/%s: %s; --refresh and --status cannot reach this mount (SIGHUP still "
                        "refreshes)", control.runtime_dir(), name, getattr(err, "strerror", None) or err)
            task_status.started()
            return
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await sock.accept()
                    nursery.start_soon(_answer, conn, refresher)
        finally:
            try:
                if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == ours:
                    os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
    finally:
        sock.close()
        os.close(dir_fd)


def _clear_stale_socket(dir_fd: int, name: str) -> bool:
    """Remove what a dead daemon left at ``name``; False when a live one answers there."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if stat.S_ISSOCK(st.st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(control.fd_path(dir_fd, name))
            return False
        except OSError:
            pass
        finally:
            probe.close()
    os.unlink(name, dir_fd=dir_fd)  # our private folder: only we put things there
    return True


async def _answer(conn: Any, refresher: Refresher) -> None:
    """One control connection: check the peer, read its command, answer it."""
    async def send(answer: dict) -> None:
        await conn.send((json.dumps(answer) + "\n").encode())

    with conn:
        try:
            uid = control.peer_uid(conn)
            command = await _read_command(conn)  # read first, so the client's send completes
            if not control.allowed(uid):
                log.warning("control: uid %d refused (only uid %d and root may refresh this mount)",
                            uid, os.geteuid())
                await send({"refused": f"refused: uid {uid} is neither the user who mounted it nor root"})
                return
            if command == "status":
                await send({"status": refresher.status()})
            elif command == "refresh":
                running = refresher.start("--refresh")
                if running is None:
                    await send({"ok": False, "message": refresher.busy_message()})
                    return
                await running.finished.wait()
                await send({"ok": running.ok, "switched": running.switched, "message": running.message})
            else:
                await send({"ok": False, "message": f"unknown command {command!r} "
                                                    f"(this daemon knows: {', '.join(control.COMMANDS)})"})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; a refresh it asked for goes on


async def _read_command(conn: Any) -> str:
    """The first line the client sends (one short word), or '' after a timeout."""
    data = b""
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        while b"\n" not in data and len(data) < 64:
            chunk = await conn.recv(64 - len(data))
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()
