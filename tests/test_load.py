"""Load: 8 threads read random ranges of a mounted 100k-member tape and compare every byte.

Runs for TARTAPEFS_LOAD_SECONDS (default 60) and samples the daemon's resident memory
and open descriptors once a second; both must stay bounded. Once a second the page cache
of the archive is dropped (POSIX_FADV_DONTNEED), so reads keep reaching the daemon instead
of the kernel's cache. The figures are printed as JSON (``pytest -s``) and written to
TARTAPEFS_LOAD_REPORT when set; ``scripts/load`` runs this and formats them.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from mountutil import NEEDS_MOUNT
from trees import record, scratch_dir

pytestmark = [NEEDS_MOUNT, pytest.mark.slow]

MEMBERS = 100_000  # files; the tape also holds their 100 folders
PER_DIR = 1000
READERS = 8
MAX_READ = 256 << 10  # bytes
SECONDS = float(os.environ.get("TARTAPEFS_LOAD_SECONDS", "60"))
# Bounds, not timings: what a leak would cross within a minute of 8 busy readers.
RSS_GROWTH_LIMIT = 64 << 20  # bytes, from the first sample under load to the largest
FD_GROWTH_LIMIT = 8  # descriptors


def build_many(root: Path) -> None:
    rng = random.Random(7)
    for i in range(MEMBERS):
        d = root / f"d{i // PER_DIR:03}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        size = rng.choice((0, 1, 100, 511, 512, 513, rng.randrange(2000)))
        (d / f"f{i:06}").write_bytes(bytes([i % 251]) * size)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory):
    """The 100k-member tree, recorded, and its archive on disk as the reference."""
    with scratch_dir(tmp_path_factory, "load") as base:
        src = base / "many"
        build_many(src)
        tape = record(src)
        from tartapefs import TapeReader

        reference = base / "reference.tar"
        with TapeReader(tape) as reader, open(reference, "wb") as out:
            for offset in range(0, tape.total_size, 1 << 20):
                out.write(reader.read(offset, 1 << 20))
        assert tape.member_count == MEMBERS + MEMBERS // PER_DIR + 1
        yield src, reference, tape.total_size


def daemon_sample(pid: int) -> tuple[int, int]:
    """(resident memory in bytes, open descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def reader_loop(path: Path, reference: Path, size: int, seed: int, stop: threading.Event,
                counts: dict) -> None:
    rng = random.Random(seed)
    reads = mismatches = errors = nbytes = 0
    fd, ref = os.open(path, os.O_RDONLY), os.open(reference, os.O_RDONLY)
    try:
        while not stop.is_set():
            offset, n = rng.randrange(size), rng.randrange(1, MAX_READ + 1)
            try:
                got = os.pread(fd, n, offset)
            except OSError:
                errors += 1
                continue
            finally:
                reads += 1
            mismatches += got != os.pread(ref, n, offset)
            nbytes += len(got)
    finally:
        os.close(fd)
        os.close(ref)
        counts[seed] = {"reads": reads, "mismatches": mismatches, "errors": errors, "bytes": nbytes}


def test_eight_random_readers_get_exact_bytes_with_bounded_memory_and_descriptors(mounts, many):
    src, reference, size = many
    mount = mounts.foreground(src)
    pid = mount.proc.pid
    stop, counts = threading.Event(), {}
    threads = [threading.Thread(target=reader_loop, args=(mount.file, reference, size, seed, stop, counts))
               for seed in range(READERS)]
    evict = os.open(mount.file, os.O_RDONLY)
    samples = [(0.0, *daemon_sample(pid))]  # mounted, idle
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        while samples[-1][0] < SECONDS:
            time.sleep(1.0)
            os.posix_fadvise(evict, 0, 0, os.POSIX_FADV_DONTNEED)
            samples.append((round(time.monotonic() - start, 1), *daemon_sample(pid)))
    finally:
        stop.set()
        for t in threads:
            t.join()
        os.close(evict)
    samples.append((round(time.monotonic() - start, 1), *daemon_sample(pid)))
    total = {key: sum(c[key] for c in counts.values()) for key in ("reads", "mismatches", "errors", "bytes")}
    summary = {
        "seconds": SECONDS, "readers": READERS, "members": MEMBERS, "tape_bytes": size,
        **total, "samples": [{"t": t, "rss_kib": rss >> 10, "fds": fds} for t, rss, fds in samples],
    }
    print(json.dumps(summary))
    if os.environ.get("TARTAPEFS_LOAD_REPORT"):
        Path(os.environ["TARTAPEFS_LOAD_REPORT"]).write_text(json.dumps(summary, indent=1))
    assert len(counts) == READERS and total["reads"] > 0
    assert total["mismatches"] == 0 and total["errors"] == 0
    assert mount.proc.poll() is None
    under_load = samples[1:]
    rss_first = under_load[0][1]
    assert max(rss for _, rss, _ in under_load) - rss_first < RSS_GROWTH_LIMIT, samples
    assert samples[-1][2] <= samples[0][2] + FD_GROWTH_LIMIT, samples
    assert max(fds for _, _, fds in samples) <= samples[0][2] + FD_GROWTH_LIMIT + READERS, samples
