"""Which file system is mounted where, read from ``/proc/self/mountinfo``.

Used by ``tartape-mount`` (is the mount point already mounted, and by what) and by
the walk (a tartapefs mount inside the source is never archived).
"""

from __future__ import annotations

FSTYPE = "fuse.tartapefs"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_fstype(path: str) -> str | None:
    """File system type mounted exactly at ``path`` (``fuse.tartapefs``...), or None."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == path:
                found = fields[sep + 1]  # the last mount on a path is the visible one
    return found
