"""Hypothesis strategies shared by the test files: headers of every shape the format has."""

from __future__ import annotations

from hypothesis import strategies as st

from tartapefs import format as fmt

NAME_BYTES = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\0", b"x").replace(b"/", b"_"))


@st.composite
def names(draw, max_parts=120):
    parts = draw(st.lists(NAME_BYTES, min_size=1, max_size=max_parts))
    name = b"/".join(p if p not in (b".", b"..") else b"x" for p in parts)
    return name


@st.composite
def headers(draw, small_size=False):
    kind = draw(st.sampled_from(fmt.KINDS))
    name = draw(names())
    if kind == fmt.DIR:
        name += b"/"
    size = 0
    if kind == fmt.FILE:
        size = draw(st.integers(0, 4096) if small_size else st.integers(0, 2**40))
    linkname = b""
    if kind in (fmt.SYMLINK, fmt.HARDLINK):
        linkname = draw(names(max_parts=12))
    return fmt.Header(
        name=name,
        kind=kind,
        size=size,
        mode=draw(st.integers(0, 0o7777)),
        mtime_ns=draw(st.integers(-(2**40), 2**40)) * 10**9 + draw(st.sampled_from([0, 0, 1, 5 * 10**8, 10**9 - 1])),
        linkname=linkname,
        uid=draw(st.integers(0, 2**32)),
        gid=draw(st.integers(0, 2**32)),
        uname=draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"u"))),
        gname=draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"g"))),
    )


OCT12 = 8**11  # the first size or mtime (seconds) ustar cannot hold
NS = 10**9


@st.composite
def common_headers(draw):
    """Headers near the common member: mostly one plain ustar block, with every field
    also drawn just past what a plain block holds (name length, size, mtime, owners, link)."""
    kind = draw(st.sampled_from(fmt.KINDS))
    name = draw(st.binary(min_size=1, max_size=110).map(lambda b: b.replace(b"\0", b"x")))
    if kind == fmt.DIR:
        name += b"/"
    size = draw(st.sampled_from([0, 1, 511, 512, 513, OCT12 - 1, OCT12]) | st.integers(0, OCT12 + 1))
    mtime_ns = draw(st.sampled_from([0, -1, -NS, NS - 1, (OCT12 - 1) * NS + NS - 1, OCT12 * NS, 2**63 - 1])
                    | st.integers(-(2**40), OCT12 * NS + NS))
    rare = st.integers(0, 9).map(lambda n: n == 0)  # a field set one time in ten
    return fmt.Header(
        name=name,
        kind=kind,
        size=size if kind == fmt.FILE else 0,
        mode=draw(st.integers(0, 0o7777) | st.integers(0, 2**20)),
        mtime_ns=mtime_ns,
        linkname=draw(st.binary(min_size=1, max_size=120).map(lambda b: b.replace(b"\0", b"l")))
        if kind in (fmt.SYMLINK, fmt.HARDLINK) or draw(rare) else b"",
        uid=draw(st.integers(1, 2**33)) if draw(rare) else 0,
        gid=draw(st.integers(1, 2**33)) if draw(rare) else 0,
        uname=b"root" if draw(rare) else b"",
        gname=b"wheel" if draw(rare) else b"",
    )
