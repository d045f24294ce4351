"""Pure tier: where members sit, what their names are, what the fingerprint covers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tartapefs import format as fmt
from tartapefs.errors import show_path, unshow_path
from tartapefs.layout import Fingerprint, Member, archive_name, locate

pytestmark = pytest.mark.pure

BASE = fmt.Header(name=b"data/a", kind=fmt.FILE, size=10, mode=0o644, mtime_ns=1000 * 10**9, linkname=b"",
                  uid=0, gid=0, uname=b"", gname=b"")


def digest(headers, total=4096):
    fp = Fingerprint()
    for h in headers:
        fp.add(h, fmt.header_size(h))
    return fp.hexdigest(total)


def test_archive_names_follow_tar_conventions():
    assert archive_name(b"data", b"", fmt.DIR) == b"data/"
    assert archive_name(b"data", b"a/b", fmt.FILE) == b"data/a/b"
    assert archive_name(b"data", b"a", fmt.DIR) == b"data/a/"
    assert archive_name(b"", b"a/b", fmt.FILE) == b"a/b"
    assert archive_name(b"x/y", b"f", fmt.SYMLINK) == b"x/y/f"


@pytest.mark.parametrize(
    "change",
    [
        {"name": b"data/b"},
        {"kind": fmt.HARDLINK},
        {"size": 11},
        {"mode": 0o600},
        {"mtime_ns": 1001 * 10**9},
        {"linkname": b"t"},
        {"uid": 1},
        {"gid": 1},
        {"uname": b"u"},
        {"gname": b"g"},
    ],
)
def test_every_bytes_deciding_field_changes_the_fingerprint(change):
    assert digest([BASE._replace(**change)]) != digest([BASE])


def test_nanoseconds_count_only_where_a_pax_header_carries_them():
    plain = BASE._replace(mtime_ns=BASE.mtime_ns + 5)
    assert digest([plain]) == digest([BASE])  # same bytes: ustar holds whole seconds
    long = BASE._replace(name=b"n" * 120)
    assert digest([long._replace(mtime_ns=long.mtime_ns + 5)]) != digest([long])


def test_fingerprint_is_stable_and_covers_order_and_total():
    other = BASE._replace(name=b"data/b")
    assert digest([BASE, other]) == digest([BASE, other])
    assert digest([BASE, other]) != digest([other, BASE])
    assert digest([BASE], total=4096) != digest([BASE], total=4608)


def test_fields_cannot_run_into_each_other():
    # Moving bytes from one field to the next must not give the same digest.
    a = BASE._replace(name=b"data/ab", linkname=b"")
    b = BASE._replace(name=b"data/a", linkname=b"b")
    assert digest([a]) != digest([b])


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=50), st.data())
def test_locate_agrees_with_a_linear_scan(sizes, data):
    headers = [BASE._replace(name=b"m%d" % i, size=s) for i, s in enumerate(sizes)]
    offsets = list(itertools.accumulate((fmt.member_size(h) for h in headers[:-1]), initial=0))
    members = [Member(h, o, fmt.header_size(h)) for h, o in zip(headers, offsets)]
    total = members[-1].end + len(fmt.FOOTER)
    assert total == sum(fmt.member_size(h) for h in headers) + 1024
    probe = data.draw(st.integers(0, members[-1].end - 1))
    linear = next(i for i, m in enumerate(members) if m.offset <= probe < m.end)
    assert locate(offsets, probe) == linear
    m = members[linear]
    assert m.offset <= m.body_offset <= m.body_end <= m.end
    assert m.body_range == (m.offset + 512, m.offset + 512 + m.size)


@given(st.binary(max_size=40))
def test_a_shown_name_is_one_printable_line_that_gives_its_bytes_back(raw):
    shown = show_path(raw)
    assert unshow_path(shown) == raw
    assert not any(0xDC80 <= ord(ch) <= 0xDCFF or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in shown)
