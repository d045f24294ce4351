"""The mounted process of ``tartape-mount``: open the tape, mount, serve until
a signal or an unmount, then leave nothing mounted.

Kept apart from ``mount.py`` (arguments, checks, background start) so that
pyfuse3 and trio are imported only by the process that actually mounts.
Teardown order is fixed by nesting: the FUSE loop and the signal watcher live
in one nursery; leaving it (normally or not) unmounts and closes the session,
then the readers close their source descriptors.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import Any

import pyfuse3
import trio

from .errors import TartapeError, counted
from .fusefs import TapeFS
from .reader import tune_malloc
from .process import Progress, Readiness, detach_stdio, sd_notify

log = logging.getLogger("tartapefs.mount")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
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
    try:
        fs = TapeFS({f.name: f for f in files}, direct_io=args.direct_io)
        serving = []
        for r in recordings:
            tapes = r.tapes()
            what = (os.path.join(args.mountpoint, files[0].name) if len(files) == 1
                    else f"{args.mountpoint} ({counted(len(tapes), 'archive')} of {r.stem})")
            serving.append(f"serving {what}: {counted(sum(t.total_size for t in tapes), 'byte')}, "
                           f"{counted(r.member_count, 'member')}, from {r.source_root} (index {r.index_path})")
        args.served_name = files[0].name
        args.read_ahead_kb = ENCRYPTED_READ_AHEAD_KB if any(r.encrypted for r in recordings) else READ_AHEAD_KB
        return trio.run(serve, fs, args, options, readiness, serving)
    finally:
        for r in recordings:
            r.close()


async def serve(fs: TapeFS, args: argparse.Namespace, options: set[str], readiness: Readiness,
                serving: list[str]) -> int:
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
            nursery.start_soon(_fuse_loop, nursery.cancel_scope)
            try:
                st = await _until_usable(served)
            except OSError as err:
                readiness.failed(f"{served}: the new mount does not answer ({err.strerror})")
                nursery.cancel_scope.cancel()
                return 1
            _tune_read_ahead(st.st_dev, args.read_ahead_kb)
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
