"""Names made to forge log lines (docs/SECURITY.md, finding 10): a file or folder named
``a\\n<date> ERROR forged`` must never start a line of its own in an error message on stderr
or in the daemon's log. Every such sink escapes control characters (show_text), whatever the
message holds, as `verify` and `ls` show names (show_path).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mountutil import NEEDS_MOUNT, TARTAPE, bounded, one_line, pread_errno
from tartapefs.errors import show_path, show_text
from tartapefs.process import OneLineFormatter
from trees import build_small_tree, record

FORGED = "2026-01-01 00:00:00,000 tartape-mount mnt: ERROR forged"  # no "/": one file name
# A name that, written raw, makes the rest of a line look like one of the daemon's own lines.
HOSTILE = f"a\n{FORGED}\r\x1b[2K\x85"
# Every line of the daemon's log file (as tests/test_mount.py reads it).
OWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} tartape-mount (/\S*): (INFO|ERROR) (.+)")


def forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(FORGED[:10]) or "\x1b" in line]


@pytest.mark.pure
@given(st.text(max_size=40))
@example("\u20280\u2029")  # line and paragraph separators: lines end there too
def test_show_text_is_one_line_without_control_characters_and_keeps_backslashes(text):
    shown = show_text(text)
    assert len(shown.splitlines()) <= 1
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xDC80 <= ord(ch) <= 0xDCFF for ch in shown)
    assert shown.count("\\") >= text.count("\\")
    assert show_text(show_path(text)) == show_path(text)  # a shown name goes through untouched


@pytest.mark.pure
def test_a_log_line_with_a_hostile_name_stays_one_line_its_traceback_below():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record_ = logging.LogRecord("t", logging.ERROR, __file__, 1, "%s: cannot be read", (HOSTILE,), None)
    assert formatter.format(record_) == "ERROR a\\n" + FORGED + "\\x0d\\x1b[2K\\xc2\\x85: cannot be read"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record_.exc_info = sys.exc_info()
    assert formatter.format(record_).splitlines()[1] == "Traceback (most recent call last):"


@pytest.mark.index
def test_errors_about_a_hostile_folder_name_are_one_line_on_stderr(tmp_path):
    src = tmp_path / HOSTILE
    src.mkdir()
    (src / "f").write_bytes(b"x")
    line = one_line(bounded([*TARTAPE, "ls", src]))  # no index recorded yet
    assert "a\\n" + FORGED in line and "no recorded tape" in line, line
    line = one_line(bounded([*TARTAPE, "record", src, "--index", src / "inside.db"]))
    assert "a\\n" + FORGED in line and "inside the source folder" in line, line


@pytest.mark.index
@pytest.mark.usefixtures("hot_path")  # the streaming child inherits the path
def test_a_hostile_member_name_in_an_error_is_escaped_one_line(tmp_path):
    src = build_small_tree(tmp_path)
    (src / HOSTILE).write_bytes(b"recorded")
    record(src)
    (src / HOSTILE).write_bytes(b"changed, longer")
    line = one_line(bounded([*TARTAPE, "stream", src, "-o", tmp_path / "out.tar"]))
    assert line.startswith("tartape: data/a\\n" + FORGED) and "source changed" in line, line


@NEEDS_MOUNT
@pytest.mark.usefixtures("hot_path")  # the daemon inherits the path
def test_mount_log_of_a_hostile_source_and_member_name_has_only_the_daemons_own_lines(tmp_path, mounts):
    """The source folder and a file in it named to forge lines: the daemon logs that it serves
    the folder (naming it) and the changed file; each is one line of its own shape."""
    parent = tmp_path / HOSTILE
    parent.mkdir()
    src = build_small_tree(parent)
    (src / HOSTILE).write_bytes(b"recorded")
    member = record(src).locate("data/" + HOSTILE)
    mount = mounts.foreground(src, None, "--direct-io")
    (src / HOSTILE).write_bytes(b"changed, longer")
    assert pread_errno(mount.file, member.offset, member.end - member.offset) == errno.EIO
    mount.stop()
    lines = mount.log_text().splitlines()
    own = [OWN_LINE.fullmatch(line) for line in lines]
    assert lines and all(own), lines
    assert not forged_lines(mount.log_text())
    errors = [m.group(3) for m in own if m.group(2) == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("data/a\\n" + FORGED), errors
    assert any(m.group(3).startswith("serving ") and "a\\n" + FORGED in m.group(3) for m in own), lines
