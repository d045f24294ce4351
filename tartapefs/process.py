"""What the programs share: ``tartape`` (cli), ``tartape-mount`` (mount) and its daemon.

Argument parsing that fails in one line, the one place where errors become an
exit code (:func:`run_main`), logging set-up, the scan progress line, sizes
such as ``10G`` or ``1GiB`` and durations such as ``10m``, systemd notification and the readiness pipe of a
background start, and where logs go. The three adapters import this module and
never each other (except that the mount entry point starts the daemon).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import select
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import TartapeError, UsageError, counted, show_path, show_text

if TYPE_CHECKING:
    from .age import Recipient

# Every command imports this module first: what only the daemon uses (syslog, systemd's
# socket) is imported where it is used, so a short command such as `extract` starts quickly.

log = logging.getLogger("tartapefs.mount")

#: The smallest shard or volume size: below it an archive of many parts is a
#: mistake (a typo for 10G), never a plan.
MIN_PART_SIZE = 10 << 10

_UNITS = {
    "": 1,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT](?:iB)?)?\s*", re.IGNORECASE)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {show_text(message)} (see {self.prog.split()[0]} --help)\n")



def give_back_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing).

    The daemon raises glibc's trim threshold (``reader.tune_malloc``), so memory freed
    after a one-time peak (the walk of a recording made at mount, the index checked and
    planned at a refresh, in worker threads' arenas too) would otherwise stay in the
    process for as long as it serves. Call it after such a peak, never per request: it
    walks every arena (about a millisecond)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)

def parse_size(text: str, option: str) -> int:
    """Bytes from ``text``: a whole number, optionally followed by K, M, G, T (powers of
    1000) or KiB, MiB, GiB, TiB (powers of 1024), as ``10G`` or ``512MiB``.

    Raises :class:`UsageError` naming ``option`` when the text is not a size or
    the size is below :data:`MIN_PART_SIZE` (10 KiB).
    """
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(
            f"{option} {text!r}: not a size (a whole number of bytes, or with K, M, G, T, "
            "KiB, MiB, GiB or TiB: 10G, 512MiB)"
        )
    size = int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if size < MIN_PART_SIZE:
        raise UsageError(f"{option} {text}: {size} bytes is below the smallest part, 10 KiB")
    return size


def size_argument(option: str) -> Callable[[str], int]:
    """An argparse ``type=`` that parses sizes and fails in one line."""
    return _argument(parse_size, option, "size")


def _argument(parse: Callable[[str, str], int], option: str, what: str) -> Callable[[str], int]:
    """An argparse ``type=`` from ``parse(text, option)``: a UsageError becomes argparse's
    one-line error (without the option, which argparse names itself)."""

    def convert(text: str) -> int:
        try:
            return parse(text, option)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None

    convert.__name__ = what
    return convert


def encryption_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--encrypt-to`` and ``--encrypt-to-file`` (both repeatable); ``what`` says what is
    encrypted ("serve", "write")."""
    parser.add_argument("--encrypt-to", metavar="RECIPIENT", action="append", default=[],
                        help=f"{what} every archive as NAME.age, encrypted to this age recipient "
                             "(age1...; repeatable)")
    parser.add_argument("--encrypt-to-file", metavar="FILE", action="append", default=[],
                        help="the same with the recipients in FILE, one per line, as age -R (repeatable)")


def recipients_of(args: argparse.Namespace) -> list[Recipient] | None:
    """The age recipients ``--encrypt-to`` and ``--encrypt-to-file`` name, in order, without
    repeats; None when neither was given. Raises RecipientError (a malformed or unsupported
    recipient, an unreadable or empty file) or AgeUnavailableError (no ``[age]`` extra) in
    one line, before any work is done."""
    if not args.encrypt_to and not args.encrypt_to_file:
        return None
    from .encrypt import load_recipients, require_crypto

    found = load_recipients(args.encrypt_to, args.encrypt_to_file)
    require_crypto()
    return found


_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> int:
    """Seconds from ``text``: a whole number with ``s``, ``m``, ``h`` or ``d`` (seconds if
    none): ``30s``, ``10m``, ``1h``. UsageError naming ``option`` when it is not one,
    or is under a second."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"{option} {text!r}: not a duration (a whole number with s, m, h or d: 30s, 10m, 1h)")
    seconds = int(match.group(1)) * _SECONDS[match.group(2).lower()]
    if seconds < 1:
        raise UsageError(f"{option} {text}: must be at least 1 second")
    return seconds


def duration_argument(option: str) -> Callable[[str], int]:
    """An argparse ``type=`` that parses durations and fails in one line."""
    return _argument(parse_duration, option, "duration")


#: The exit status of a command whose reader went away: a shell's 128 + SIGPIPE, as for cat.
CLOSED_PIPE_EXIT = 141


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; turn every expected failure into one line and an exit code.

    A reader that closed our stdout early (``tartape ls SRC | head -1``) ends the command
    quietly with :data:`CLOSED_PIPE_EXIT`, as it ends ``cat``: not an error line and exit 1
    (which ``verify`` uses for "members changed")."""
    try:
        code = body()
        sys.stdout.flush()  # here, not at exit, where a closed pipe could no longer be told
        return code
    except BrokenPipeError as err:
        if not _stdout_closed():
            where = f"{show_path(err.filename)}: " if err.filename else ""
            print(f"{prog}: {where}{err.strerror}", file=sys.stderr)
            return 1
        # Nothing more can reach the reader: the last flush at exit goes nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_PIPE_EXIT
    except TartapeError as err:
        print(f"{prog}: {show_text(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:
        where = f"{show_path(err.filename)}: " if err.filename else ""
        print(f"{prog}: {where}{show_text(str(err.strerror or err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


class OneLineFormatter(logging.Formatter):
    """A log line that stays one line: control characters in its message (a name made to
    forge a line of the log, say) escaped with :func:`show_text`. A traceback that
    :meth:`logging.Logger.exception` adds stays as it is, below the line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return show_text(super().formatMessage(record))


def log_to_stderr(prog: str, level: str = "INFO") -> None:
    """The command-line program's logging: ``prog: LEVEL: message`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"{prog}: %(levelname)s: %(message)s"))
    root = logging.getLogger("tartapefs")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Progress:
    """The scan count on one refreshed stderr line while a folder is recorded (a big
    tree takes a while); silent when stderr is not a terminal. Call it with the
    count so far; :meth:`done` ends the line."""

    def __init__(self, what: str) -> None:
        self.count = 0
        self._what = what
        self._shown = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if self._tty and now - self._shown > 0.2:  # throttled: millions of entries
            self._shown = now
            print(f"\r{self._what}: {counted(count, 'entry', 'entries')}\033[K", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty and self._shown:
            print(f"\r{self._what}: {counted(self.count, 'entry', 'entries')}\033[K", file=sys.stderr, flush=True)
            self._shown = 0.0


# -- the mounted process: logging, readiness, systemd ---------------------------------


def _log_format(prog: str, mnt: str) -> str:
    # Several mounts may log to one place: every line names its mount point (as a format
    # string: a % in its name is doubled).
    return f"{prog} {show_path(mnt).replace('%', '%%')}: %(levelname)s %(message)s"


def log_for_mount(prog: str, mnt: str, level: str, log_file: str | None, quiet: bool) -> None:
    """Log to ``log_file``, else to stderr (WARNING and up only when ``quiet``: a
    background start stays as quiet as sshfs unless something is wrong)."""
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(OneLineFormatter("%(asctime)s " + _log_format(prog, mnt)))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter(_log_format(prog, mnt)))
        if quiet:
            handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def default_log_path(mnt: str) -> str:
    """Where a background daemon logs with neither --log-file nor syslog:
    ``$XDG_STATE_HOME/tartapefs/log/<mount point, / as _>.log``."""
    from .record import state_dir  # only the mount logs there: the other programs start without record

    return os.path.join(state_dir(), "log", (mnt.strip("/").replace("/", "_") or "root") + ".log")


#: A default log file not written for this long belongs to a mount point gone for as long.
LOG_KEEP_S = 30 * 86400


def prune_logs(folder: str, now: float | None = None) -> None:
    """Remove the ``*.log`` files of ``folder`` (default_log_path's) not written for
    LOG_KEEP_S seconds, so logs of mount points that no longer exist do not pile up.
    Best effort: what cannot be removed stays."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if (entry.name.endswith(".log") and entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > LOG_KEEP_S):
                os.unlink(entry.path)
        except OSError:
            pass


def detach_stdio(prog: str, mnt: str, log_file: str | None) -> None:
    """Background child, once ready: stop using the caller's terminal (or pipe: a
    caller reading our stderr would otherwise wait for us to exit). Logs go on to
    syslog, or else to default_log_path(): the line naming a changed member must
    land somewhere a user can read it."""
    if not log_file:
        root = logging.getLogger()
        handler: logging.Handler
        if os.path.exists("/dev/log"):
            from logging.handlers import SysLogHandler

            handler = SysLogHandler("/dev/log")
            handler.setFormatter(OneLineFormatter(_log_format(prog, mnt)))
        else:
            path = default_log_path(mnt)
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                prune_logs(os.path.dirname(path))
                handler = logging.FileHandler(path)
                handler.setFormatter(OneLineFormatter("%(asctime)s " + _log_format(prog, mnt)))
            except OSError:
                handler = logging.NullHandler()
        root.handlers[:] = [handler]
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def sd_notify(state: str) -> None:
    """Send ``state`` (e.g. "READY=1") to systemd if it is listening.
    Never fails: a service manager that cannot be told is not our error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], err)


class Readiness:
    """Tells whoever waits for the mount (background parent, systemd) that it
    is usable, or why it never will be."""

    def __init__(self, ready_fd: int | None, prog: str = "tartape-mount") -> None:
        self.ready_fd = ready_fd
        self.prog = prog

    def ready(self, status: str) -> None:
        sd_notify(f"READY=1\nSTATUS={status}")
        self._send(b"ready\n")

    def failed(self, message: str) -> None:
        if self.ready_fd is None:
            print(f"{self.prog}: {show_text(message)}", file=sys.stderr)
        self._send(f"error {show_text(message)}\n".encode())

    def _send(self, line: bytes) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, line)
            os.close(self.ready_fd)
        except OSError:
            pass  # the parent is gone; nobody to tell
        self.ready_fd = None
