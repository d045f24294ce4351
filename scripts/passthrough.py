#!/usr/bin/env python3
"""A minimal one-file pyfuse3 passthrough: the benchmark's FUSE ceiling.

Serves ONE existing file read-only as MNT/<its name>, with nothing between the kernel and
os.pread: no index, no headers, no checks. Whatever tartapefs' daemon does on top of this costs
what the benchmark measures against it. It deliberately matches the daemon's mode: pread called
directly on the trio loop (DESIGN.md: a thread hop costs more than a cached pread here), the
same FileInfo flags (keep_cache, optional direct_io), and an optional read_ahead_kb raise.

Runs in the foreground until unmounted (`fusermount3 -u MNT`) or sent SIGINT/SIGTERM; the
caller knows it is ready when MNT/<name> appears.

Usage: passthrough.py FILE MNT [--direct-io] [--read-ahead-kb N]
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
# The tree never changes while mounted, so the kernel may cache names and attributes for long.
CACHE_TIMEOUT_S = 3600.0
# Readers size their buffers from st_blksize; 1 MiB matches the largest FUSE request.
BLKSIZE = 1 << 20


class OneFile(pyfuse3.Operations):
    """Root directory holding a single read-only regular file backed by `path`."""

    def __init__(self, path: str, direct_io: bool) -> None:
        super().__init__()
        self._name = os.fsencode(os.path.basename(path))
        self._fd = os.open(path, os.O_RDONLY)
        self._st = os.fstat(self._fd)
        self._direct_io = direct_io

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = CACHE_TIMEOUT_S
        attr.attr_timeout = CACHE_TIMEOUT_S
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        mtime_ns = self._st.st_mtime_ns
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
        attr.st_blksize = BLKSIZE
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
            attr.st_size = self._st.st_size
            attr.st_blocks = (self._st.st_size + 511) // 512
        return attr

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != self._name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, self._name, self._attr(FILE_INODE), 1)

    async def open(self, inode, flags, ctx):
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        # keep_cache: the bytes never change, so re-opens may reuse the page cache.
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=self._direct_io)

    async def read(self, fh, off, size):
        try:
            return os.pread(self._fd, size, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def release(self, fh):
        pass

    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = BLKSIZE
        st.f_namemax = 255
        return st


def raise_read_ahead(mountpoint: str, kb: int) -> None:
    """Sets the kernel readahead window of this mount: FUSE requests grow up to `kb` KiB."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    with open(path, "w") as f:
        f.write(str(kb))


async def serve(mountpoint: str, read_ahead_kb: int | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

            nursery.start_soon(stop_on_signal)
            if read_ahead_kb is not None:
                # The bdi only exists once the kernel has answered INIT, i.e. inside main().
                nursery.start_soon(trio.to_thread.run_sync, raise_read_ahead, mountpoint,
                                   read_ahead_kb)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("mountpoint")
    parser.add_argument("--direct-io", action="store_true",
                        help="FileInfo.direct_io: requests are the reader's read() size")
    parser.add_argument("--read-ahead-kb", type=int, default=None,
                        help="raise the mount's readahead window after mounting")
    args = parser.parse_args(argv)

    ops = OneFile(args.file, args.direct_io)
    options = set(pyfuse3.default_options)
    options |= {"fsname=tartapefs-passthrough", "ro"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(serve, args.mountpoint, args.read_ahead_kb)
    finally:
        # After `fusermount3 -u` the session is gone already; after a signal we unmount here.
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
