"""The recorder a mount's refresh runs as a child process: ``python -m tartapefs.worker``.

A refresh records while the daemon keeps answering reads. In a thread of the
daemon the walk would hold the interpreter lock for most of its time and
starve the FUSE loop (measured in docs/BENCHMARKS.md, "refresh"), so it runs
here, in a process of its own. The daemon writes one JSON request as one line
on stdin and keeps stdin open::

    {"options": RecordOptions.to_json(), "previous": {tape name: [fingerprint, mtime]}}

and reads lines on stdout: ``entries N`` as the walk goes, ``log LEVEL
message`` for what the recorder logs (skipped sockets...), then ``done
FINGERPRINT`` once the index is renamed into place, or ``error MESSAGE`` (one
line, exit 1). A child that ends without either line was killed: the index it
was writing is a temporary file, and the previous index is untouched. When
stdin closes before the end (the daemon is gone), the child stops at once: a
recording nobody waits for would only rename an index over the folder's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from .errors import TartapeError, show_path
from .record import RecordOptions, TapeRecorder

# Progress lines at most this often (seconds): a daemon's status reads the last one.
PROGRESS_EVERY_S = 0.25
# The request is a few hundred bytes; a line longer than this is not one.
REQUEST_MAX = 1 << 20


def command() -> list[str]:
    """How the daemon starts this program."""
    return [sys.executable, "-m", "tartapefs.worker"]


def request(options: RecordOptions, previous: dict[str, tuple[str, int]]) -> bytes:
    """The request for one recording, as the child reads it on stdin (one line)."""
    return json.dumps({"options": options.to_json(), "previous": previous}).encode() + b"\n"


def one_line(text: str) -> str:
    """``text`` as one line of the protocol (a path may hold a newline)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class _Lines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say(f"log {record.levelname} {one_line(record.getMessage())}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _read_request() -> bytes:
    """The first line on stdin, read from the descriptor itself (no buffer: the rest
    of stdin is watched by :func:`_stop_when_orphaned`)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < REQUEST_MAX:
        chunk = os.read(0, 1)
        if not chunk:
            break
        data += chunk
    return data


def _stop_when_orphaned() -> None:
    """Exit as soon as stdin reaches its end: the daemon closed it or died."""
    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main() -> int:
    logging.getLogger("tartapefs").handlers[:] = [_Lines()]
    logging.getLogger("tartapefs").setLevel(logging.INFO)
    try:
        job = json.loads(_read_request())
        options = RecordOptions.from_json(job["options"])
        previous = {name: (fp, int(mtime)) for name, (fp, mtime) in job["previous"].items()}
    except (ValueError, KeyError, TypeError) as err:
        _say(f"error bad request ({one_line(str(err))})")
        return 1
    _stop_when_orphaned()
    shown, last = [0.0], [0]

    def progress(count: int) -> None:
        last[0] = count
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_EVERY_S:
            shown[0] = now
            _say(f"entries {count}")

    try:
        fingerprint = TapeRecorder.from_options(options, progress, previous).commit()
    except TartapeError as err:
        _say(f"error {one_line(str(err))}")
        return 1
    except OSError as err:
        where = f"{show_path(err.filename)}: " if err.filename else ""
        _say(f"error {one_line(where + (err.strerror or str(err)))}")
        return 1
    _say(f"entries {last[0]}")
    _say(f"done {fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
