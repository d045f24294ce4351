"""Pure tier: the header encoder, checked against its size function and against
CPython's tarfile (an independent reader, and an independent ustar writer)."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from strategies import headers
from tartapefs import format as fmt

pytestmark = pytest.mark.pure


def parse_first(data: bytes) -> tarfile.TarInfo:
    """Python tarfile's reading of the first member (its header only)."""
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape")
    info = tf.next()
    assert info is not None
    return info


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@settings(max_examples=400)
@given(headers())
def test_encoded_length_equals_header_size(h):
    data = fmt.encode_header(h)
    assert len(data) == fmt.header_size(h)
    assert len(data) % fmt.BLOCK == 0


@settings(max_examples=300)
@given(headers())
@example(fmt.Header(name=b"a" * 101, kind=fmt.FILE, size=8 * 2**30))  # size just past ustar's 8 GiB - 1
@example(fmt.Header(name=b"d/" * 60 + b"x", kind=fmt.FILE, mtime_ns=-1))  # pre-1970 mtime
@example(fmt.Header(name=b"\xff\xfe/" * 60 + b"x", kind=fmt.FILE))  # long non-UTF-8 name
def test_python_tarfile_reads_back_every_field(h):
    info = parse_first(fmt.encode_header(h) + fmt.FOOTER)
    assert as_bytes(info.name) == h.name.rstrip(b"/")
    assert info.size == h.size
    assert info.mode == h.mode
    if fmt.header_size(h) > fmt.BLOCK:  # a PAX header: the exact time (tarfile makes it a float)
        assert abs(info.mtime - h.mtime_ns / 1e9) < 1e-3
    else:
        assert info.mtime == h.mtime
    assert info.uid == h.uid and info.gid == h.gid
    assert as_bytes(info.uname) == h.uname and as_bytes(info.gname) == h.gname
    assert {fmt.FILE: info.isreg, fmt.DIR: info.isdir, fmt.SYMLINK: info.issym, fmt.HARDLINK: info.islnk}[h.kind]()
    if h.linkname:
        assert as_bytes(info.linkname) == h.linkname


@given(headers(small_size=True))
def test_member_with_body_is_read_back_by_tarfile(h):
    body = bytes((i * 7) % 251 for i in range(h.size))
    data = fmt.encode_header(h) + body + bytes(fmt.padding(h.size)) + fmt.FOOTER
    tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape")
    (info,) = tf.getmembers()
    if h.kind == fmt.FILE:
        assert tf.extractfile(info).read() == body


@pytest.mark.parametrize("kind", [fmt.FILE, fmt.DIR, fmt.SYMLINK, fmt.HARDLINK])
@given(
    name=st.binary(min_size=1, max_size=99).filter(lambda b: b"\0" not in b and not b.endswith(b"/")),
    mode=st.integers(0, 0o7777),
    mtime=st.integers(0, 8**11 - 1),
    size=st.integers(0, 8**11 - 1),
    linkname=st.binary(max_size=100).filter(lambda b: b"\0" not in b),
)
def test_plain_ustar_header_is_byte_identical_to_cpython(kind, name, mode, mtime, size, linkname):
    """Where ustar holds everything, our block equals CPython's own USTAR writer's."""
    if kind != fmt.FILE:
        size = 0
    if kind not in (fmt.SYMLINK, fmt.HARDLINK):
        linkname = b""
    full = name + b"/" if kind == fmt.DIR else name
    h = fmt.Header(name=full, kind=kind, size=size, mode=mode, mtime_ns=mtime * 10**9, linkname=linkname)
    info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    info.type = {fmt.FILE: tarfile.REGTYPE, fmt.DIR: tarfile.DIRTYPE, fmt.SYMLINK: tarfile.SYMTYPE,
                 fmt.HARDLINK: tarfile.LNKTYPE}[kind]
    info.mode, info.mtime, info.size = mode, mtime, size
    info.linkname = linkname.decode("utf-8", "surrogateescape")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    expected = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    assert fmt.encode_header(h) == expected


@pytest.mark.parametrize("value_len", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 88, 89, 90, 91, 92, 93, 94, 95, 96,
                                       97, 98, 99, 100, 990, 991, 992, 993, 994, 995, 996, 997, 998, 999, 1000,
                                       9989, 9990, 9991, 9992, 9993, 9994, 9995, 9996, 9997])
def test_pax_record_length_counts_its_own_digits(value_len):
    record = fmt.pax_record(b"path", b"v" * value_len)
    length, rest = record.split(b" ", 1)
    assert int(length) == len(record)
    assert rest == b"path=" + b"v" * value_len + b"\n"


def test_pax_header_only_when_ustar_cannot_hold_it():
    assert fmt.header_size(fmt.Header(name=b"a" * 100, kind=fmt.FILE)) == 512
    # 254 bytes split at a "/" into prefix (<= 155) and name (<= 100): still plain ustar
    assert fmt.header_size(fmt.Header(name=b"p" * 150 + b"/" + b"n" * 100, kind=fmt.FILE)) == 512
    assert fmt.header_size(fmt.Header(name=b"n" * 101, kind=fmt.FILE)) > 512
    assert fmt.header_size(fmt.Header(name=b"a", kind=fmt.FILE, size=8**11 - 1)) == 512
    assert fmt.header_size(fmt.Header(name=b"a", kind=fmt.FILE, size=8**11)) > 512
    assert fmt.header_size(fmt.Header(name=b"a", kind=fmt.FILE, mtime_ns=-1)) > 512
    # a fraction of a second alone never adds a PAX header
    assert fmt.header_size(fmt.Header(name=b"a", kind=fmt.FILE, mtime_ns=1_500_000_000)) == 512
    assert fmt.header_size(fmt.Header(name=b"a", kind=fmt.SYMLINK, linkname=b"t" * 101)) > 512


def test_binary_charset_only_for_names_that_are_not_utf8():
    long_utf8 = fmt.encode_header(fmt.Header(name="é".encode() * 80, kind=fmt.FILE))
    long_binary = fmt.encode_header(fmt.Header(name=b"\xff" * 160, kind=fmt.FILE))
    assert b"hdrcharset=BINARY" not in long_utf8
    assert b"hdrcharset=BINARY" in long_binary
    # a short non-UTF-8 name goes into the ustar field as raw bytes, no PAX at all
    assert fmt.encode_header(fmt.Header(name=b"\xff\xfe", kind=fmt.FILE))[:2] == b"\xff\xfe"


def test_pax_header_name_is_deterministic():
    h = fmt.Header(name=b"top/" + b"x" * 300, kind=fmt.FILE)
    first, second = fmt.encode_header(h), fmt.encode_header(h)
    assert first == second
    assert first[:100].rstrip(b"\0") == (b"PaxHeaders/" + b"x" * 300)[:100]


@pytest.mark.parametrize(
    ("mtime_ns", "record"),
    [
        (1_500_000_000, b"mtime=1.5"),
        (1_000_000_001, b"mtime=1.000000001"),
        (-1_500_000_000, b"mtime=-1.5"),
        (-1_000_000_000, b"mtime=-1"),
        (9_000_000_000 * 10**9, b"mtime=9000000000"),
    ],
)
def test_a_pax_header_carries_the_exact_mtime(mtime_ns, record):
    data = fmt.encode_header(fmt.Header(name=b"n" * 120, kind=fmt.FILE, mtime_ns=mtime_ns))
    assert record + b"\n" in data


def test_padding_and_footer():
    assert [fmt.padding(n) for n in (0, 1, 511, 512, 513)] == [0, 511, 1, 0, 511]
    assert fmt.FOOTER == bytes(1024)
    assert fmt.member_size(fmt.Header(name=b"a", kind=fmt.FILE, size=513)) == 512 + 1024
