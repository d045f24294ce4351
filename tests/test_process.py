"""Pure tier: what the programs share — sizes as users write them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tartapefs.errors import UsageError
from tartapefs.process import MIN_PART_SIZE, parse_duration, parse_size

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("text,size", [
    ("10240", 10240), ("11K", 11_000), ("1M", 10**6), ("2G", 2 * 10**9),
    ("1T", 10**12), ("10KiB", 10240), ("1MiB", 1 << 20), ("3GiB", 3 << 30), ("1TiB", 1 << 40),
    ("1g", 10**9), ("1gib", 1 << 30), (" 5 MiB ", 5 << 20),
])
def test_sizes_take_decimal_and_binary_suffixes(text, size):
    assert parse_size(text, "--shard-size") == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1G", "10 KB", "1e9", "1Gi", "ten", "0x100"])
def test_an_unparsable_size_is_one_line_naming_the_option(text):
    with pytest.raises(UsageError, match=r"^--split .*not a size") as err:
        parse_size(text, "--split")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["10239", "10K", "0", "1KiB"])
def test_a_size_below_10_kib_is_refused(text):
    with pytest.raises(UsageError, match="below the smallest part, 10 KiB"):
        parse_size(text, "--shard-size")
    assert parse_size("10KiB", "--shard-size") == MIN_PART_SIZE


def test_the_progress_line_counts_one_entry_in_the_singular(capsys):
    from tartapefs.process import Progress

    progress = Progress("tartape: scanned")
    progress._tty = True  # as on a terminal
    progress(1)
    progress.done()
    shown = capsys.readouterr().err
    assert "tartape: scanned: 1 entry\x1b[K" in shown and "entries" not in shown


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("45", 45),
                                          (" 5M ", 300)])
def test_durations_take_seconds_minutes_hours_days(text, seconds):
    assert parse_duration(text, "--refresh-every") == seconds


@pytest.mark.parametrize("text", ["", "soon", "1.5h", "-5m", "10x", "1h30m", "0s", "0"])
def test_a_bad_duration_is_one_line_naming_the_option(text):
    with pytest.raises(UsageError, match="^--refresh-every ") as err:
        parse_duration(text, "--refresh-every")
    assert "\n" not in str(err.value)


# With the daemon's malloc settings, 64 MiB freed after a peak stays in the process until
# give_back_memory() returns it (what the walk of a recording made at mount leaves).
_PEAK = """
import sys
from tartapefs.process import give_back_memory
from tartapefs.reader import tune_malloc

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) << 10

tune_malloc()
blobs = [bytes([i % 251]) * 4000 for i in range(16384)]  # 64 MiB, each through malloc
peak = rss()
del blobs
kept = rss()
give_back_memory()
print(peak, kept, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc")
def test_memory_freed_after_a_peak_is_given_back_to_the_system():
    done = subprocess.run([sys.executable, "-c", _PEAK], capture_output=True, text=True, check=True)
    peak, kept, after = map(int, done.stdout.split())
    assert kept > peak - (16 << 20)  # held after the free: the raised trim threshold
    assert after < kept - (48 << 20)  # given back
