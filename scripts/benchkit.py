"""Building blocks of scripts/bench: seeded datasets, mounts, timing, the results table.

Stdlib only: the bench runs under any python3 >= 3.11; tartapefs and the peers run in their own
virtualenvs as child processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
MOUNT_CMD = REPO / ".venv" / "bin" / "tartape-mount"
PASSTHROUGH = REPO / "scripts" / "passthrough.py"
SEED = 4  # the issue number: any fixed value, so every run builds the same bytes
MiB = 1 << 20
GiB = 1 << 30
FIXED_MTIME = 1_700_000_000  # dataset mtimes: archives identical from one run to the next
POOL_SIZE = 64 * MiB  # seeded random bytes that file contents are cut from


# -- datasets -----------------------------------------------------------------------------


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError



@dataclass(frozen=True)
class TreeSpec:
    """`files` regular files of min_size..max_size bytes, `per_dir` to a directory."""

    name: str
    files: int
    min_size: int
    max_size: int
    per_dir: int = 1000

    @property
    def label(self) -> str:
        if self.files == 1:
            return human(self.min_size)
        return f"{human(self.min_size)}–{human(self.max_size)}"


class Datasets:
    """Builds trees under WORKDIR/data once; a stamp holding the spec marks one complete.
    Indexes and catalogs of a tree live in WORKDIR/index/<tree name>.*."""

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "data"
        self.tars = workdir / "tars"
        self.indexes = workdir / "index"
        self._pool: bytes | None = None

    def pool(self) -> bytes:
        if self._pool is None:
            self._pool = random.Random(SEED).randbytes(POOL_SIZE)
        return self._pool

    def tree(self, spec: TreeSpec) -> Path:
        src = self.root / spec.name
        stamp = self.root / f"{spec.name}.spec"
        want = json.dumps(asdict(spec), sort_keys=True)
        if stamp.exists() and stamp.read_text() == want:
            return src
        log(f"building dataset {spec.name} ({spec.files} files of {spec.label})")
        stamp.unlink(missing_ok=True)
        shutil.rmtree(src, ignore_errors=True)
        for stale in self.indexes.glob(f"{spec.name}.*"):  # they describe the old tree
            stale.unlink()
        self._write_tree(src, spec)
        stamp.write_text(want)
        return src

    def _write_tree(self, src: Path, spec: TreeSpec) -> None:
        pool, rng = self.pool(), random.Random(f"{SEED}:{spec.name}")
        dirs = []
        for i in range(spec.files):
            d = src / f"d{i // spec.per_dir:04d}"
            if i % spec.per_dir == 0:
                d.mkdir(parents=True)
                dirs.append(d)
            path = d / f"f{i:07d}.bin"
            size = rng.randint(spec.min_size, spec.max_size)
            with open(path, "wb") as f:
                while size:  # slices of the pool at random offsets: real, distinct bytes
                    n = min(size, MiB)
                    off = rng.randrange(POOL_SIZE - n + 1)
                    f.write(pool[off:off + n])
                    size -= n
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        for d in [*dirs, src]:  # after their children, which changed them
            os.utime(d, (FIXED_MTIME, FIXED_MTIME))

    def gnu_tar(self, spec: TreeSpec) -> Path:
        """The tree archived by GNU tar: the bytes the passthrough serves for this class."""
        src = self.tree(spec)
        out = self.tars / f"{spec.name}.tar"
        stamp = self.tars / f"{spec.name}.tar.spec"
        want = (self.root / f"{spec.name}.spec").read_text()
        if not (out.exists() and stamp.exists() and stamp.read_text() == want):
            self.tars.mkdir(parents=True, exist_ok=True)
            run(["tar", "-cf", str(out), "-C", str(src.parent), src.name])
            stamp.write_text(want)
        return out


# -- processes, mounts, caches ---------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def timed_shell(cmd: str) -> float:
    """Wall seconds of a bash command; pipefail so `tar | cat` cannot fail silently."""
    t0 = time.perf_counter()
    run(["bash", "-c", f"set -o pipefail; {cmd}"])
    return time.perf_counter() - t0


#: The environment that makes tartapefs run its pure-Python path (README: "Compiled and
#: pure-Python paths"); figures taken on both paths show what the C extension changes.
PURE_ENV = {**os.environ, "TARTAPEFS_PURE": "1"}


def py_child(python: Path, code: str, *args: str, env: dict | None = None) -> dict:
    """Runs `code` in another interpreter; it prints one JSON object as its last line."""
    out = run([str(python), "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def drop_cache(path: Path) -> None:
    """Evicts one file's cached pages (on a FUSE file: the next read goes to the daemon)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def is_mounted(mnt: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(mnt) for line in f)


def unmount(mnt: Path) -> None:
    for _ in range(50):  # a reader that just closed may keep the mount busy for a moment
        if not is_mounted(mnt):
            return
        done = subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    run(["fusermount3", "-uz", str(mnt)])  # lazy: never leave a mount behind


def alive(pid: int) -> bool:
    """False once the process has exited: a zombie counts as gone, since the background
    daemon's parent has exited and whoever adopted it may reap it late."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon {pid} still running {timeout:.0f}s after its unmount")
        time.sleep(0.01)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bdi_read_ahead_kb(mnt: Path) -> int:
    dev = os.stat(mnt).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text())


def daemon_pid(mnt: Path) -> int:
    """The tartape-mount daemon serving `mnt` (it runs as `python -m tartapefs.mount ... MNT`)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and os.fsencode(mnt) in argv and any(
                b"tartapefs.mount" in a or a.endswith(b"tartape-mount") for a in argv):
            return int(proc.name)
    raise RuntimeError(f"no tartape-mount daemon found for {mnt}")


@dataclass
class Mounted:
    file: Path
    pid: int
    seconds: float  # how long `tartape-mount` took to return (it returns once serving)


@contextlib.contextmanager
def tape_mount(src: Path, index: Path, mnt: Path, direct_io: bool = False,
               options: tuple[str, ...] = (), name: str = "dataset.tar",
               env: dict | None = None) -> Iterator[Mounted]:
    """`tartape-mount` with `options` added; `name` is the file it serves; the daemon
    inherits `env` (PURE_ENV: the pure-Python path)."""
    mnt.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run([str(MOUNT_CMD), str(src), str(mnt), "--index", str(index),
         *(["--direct-io"] if direct_io else []), *options], env=env)
    seconds = time.perf_counter() - t0
    pid = None
    try:
        pid = daemon_pid(mnt)
        yield Mounted(mnt / name, pid, seconds)
    finally:
        unmount(mnt)
        wait_gone(pid)


@contextlib.contextmanager
def passthrough(file: Path, mnt: Path, read_ahead_kb: int,
                direct_io: bool = False) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(VENV_PY), str(PASSTHROUGH), str(file), str(mnt),
                             "--read-ahead-kb", str(read_ahead_kb),
                             *(["--direct-io"] if direct_io else [])])
    served = mnt / file.name
    try:
        deadline = time.monotonic() + 30
        while not served.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"passthrough did not come up on {mnt}")
            time.sleep(0.02)
        yield served
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()


# -- measuring ----------------------------------------------------------------------------


def alternate(cases: dict[str, Callable[[], float]], repeats: int,
              warm_up: Callable[[], object] | None = None,
              at_most: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Warms up (by default: every case once, untimed, which fills the sources' page cache for
    all of them), then repeats rounds of A B C ..., so drift on the machine hits every case
    alike. `at_most` caps the runs of a case too slow to repeat (it then runs in the first
    rounds only). Returns all samples (seconds) by case.

    Dirty pages are flushed first, so the writeback of datasets just written does not overlap
    (and slow) whichever case happens to run while it goes on."""
    os.sync()
    for fn in [warm_up] if warm_up else cases.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats):
        for name, fn in cases.items():
            if round_ < (at_most or {}).get(name, repeats):
                samples[name].append(fn())
    return samples


def med(samples: list[float]) -> float:
    return statistics.median(samples)


def fuse_read(cmd: str, file: Path) -> Callable[[], float]:
    def go() -> float:
        drop_cache(file)
        return timed_shell(cmd.format(f=file))
    return go


def shell(cmd: str) -> Callable[[], float]:
    return lambda: timed_shell(cmd)


DD = "dd if={f} of=/dev/null bs=1M status=none"
CAT = "cat {f} > /dev/null"


@dataclass
class Figure:
    """One row of the table. ratio = ours/peer (or peer/ours where smaller is better for us,
    so that the target always reads as 'ratio >= target' or 'ratio <= target')."""

    figure: str
    ours: float
    unit: str
    peer: str = "—"
    peer_value: float | None = None
    ratio: float | None = None
    target: str = "—"
    met: bool | None = None


@dataclass
class Results:
    profile: str
    figures: list[Figure] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        versus = f" vs {fig.peer} {fmt(fig.peer_value)} (ratio {fmt(fig.ratio)})"
        log(f"{fig.figure}: {fmt(fig.ours)} {fig.unit}" + (versus if fig.ratio else ""))


def compare(figure: str, ours: float, unit: str, peer: str, peer_value: float,
            op: str | None = None, goal: float | None = None, invert: bool = False) -> Figure:
    """A ratio row; op '>=' or '<=' against goal decides 'met?'. invert: ratio = peer/ours."""
    ratio = (peer_value / ours) if invert else (ours / peer_value)
    op = None if goal is None else op
    met = None if op is None else (ratio >= goal if op == ">=" else ratio <= goal)
    target = "—" if op is None else f"{op} {goal:g}×"
    return Figure(figure, ours, unit, peer, peer_value, ratio, target, met)


def absolute(figure: str, ours: float, unit: str, op: str | None = None,
             goal: float | None = None) -> Figure:
    met = None if op is None else (ours < goal if op == "<" else ours <= goal)
    return Figure(figure, ours, unit, target="—" if op is None else f"{op} {goal:g} {unit}",
                  met=met)


def ranged_read(file: Path, readers: int, chunk: int) -> float:
    """Reads the whole file as `chunk`-sized ranges taken in turn by `readers` threads, 1 MiB
    at a time with pread (as rclone's multi-thread copy does); returns wall seconds."""
    drop_cache(file)
    size = file.stat().st_size
    starts = iter(range(0, size, chunk))
    lock = threading.Lock()
    fd = os.open(file, os.O_RDONLY)
    errors: list[BaseException] = []

    def worker() -> None:
        buf = bytearray(MiB)
        try:
            while True:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                for off in range(start, min(start + chunk, size), MiB):
                    if os.preadv(fd, [buf], off) <= 0:
                        raise RuntimeError(f"EOF at {off}")
        except BaseException as exc:  # re-raised in the caller: a failed read must not time well
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(readers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    return time.perf_counter() - t0



# -- the table -----------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def markdown(res: Results) -> str:
    lines = ["| figure | ours | peer | peer value | ratio | target | met? |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in res.figures:
        met = {True: "yes", False: "**NO**", None: "—"}[f.met]
        peer_value = "—" if f.peer_value is None else f"{fmt(f.peer_value)} {f.unit}"
        ratio = "—" if f.ratio is None else f"{f.ratio:.2f}×"
        peer = f.peer.replace("|", "\\|")  # a literal pipe would split the cell
        lines.append(f"| {f.figure} | {fmt(f.ours)} {f.unit} | {peer} | {peer_value} | "
                     f"{ratio} | {f.target} | {met} |")
    return "\n".join(lines) + "\n"
