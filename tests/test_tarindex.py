"""The index member's CSV (tarindex): rows as Python's csv module writes them, offsets as
tarfile reads them, and the tail search that finds it without a scan."""

from __future__ import annotations

import csv
import io
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tartapefs import format as fmt
from tartapefs import tarindex
from tartapefs.errors import ArchiveError
from tartapefs.layout import Member
from tartapefs.memtape import MemoryTape

pytestmark = pytest.mark.pure

names = st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b)


def member(name: bytes, size: int = 3, offset: int = 0, mtime_ns: int = 0) -> Member:
    h = fmt.Header(name=name, kind=fmt.FILE, size=size, mtime_ns=mtime_ns)
    return Member(h, offset, fmt.header_size(h))


@given(name=names, size=st.integers(0, 1 << 40), mtime_ns=st.integers(-(1 << 62), 1 << 62))
@settings(max_examples=300)
def test_a_row_is_what_the_csv_module_writes_and_reads_back_exactly(name, size, mtime_ns):
    m = member(name, size, 4096, mtime_ns)
    row = tarindex.index_row(m)
    out = io.StringIO(newline="")
    csv.writer(out).writerow([os.fsdecode(name), size, 4096, 4096 + m.header_size, "file",
                              tarindex.mtime_text(m).decode()])
    assert row == out.getvalue().encode("utf-8", "surrogateescape")
    content = tarindex.HEADER_ROW + row
    (parsed,) = tarindex.parse_rows(content)
    assert parsed.name == name and parsed.size == size and parsed.body_offset == m.body_offset
    assert tarindex.find_rows(content, name) == [parsed]
    assert tarindex.index_csv_size([m]) == len(tarindex.index_csv([m])) == len(content)


def test_an_exact_lookup_is_not_fooled_by_a_row_inside_a_quoted_name():
    decoy = member(b'x\r\nseg/a.csv,9,9,9,file,9\r\n"', offset=0)
    real = member(b"seg/a.csv", offset=decoy.end)
    content = tarindex.index_csv([decoy, real])
    (found,) = tarindex.find_rows(content, b"seg/a.csv")
    assert found.header_offset == real.offset
    assert tarindex.find_rows(content, b"seg/a") == []
    assert [r.name for r in tarindex.parse_rows(content)] == [decoy.name, real.name]


@pytest.mark.parametrize("content", [b"", b"nope\r\n", tarindex.HEADER_ROW + b"a,1,2\r\n",
                                     tarindex.HEADER_ROW + b"a,x,0,512,file,0\r\n",
                                     tarindex.HEADER_ROW + b"a,1,0,512,fifo,0\r\n",
                                     tarindex.HEADER_ROW + b"a,1,600,512,file,0\r\n"])
def test_a_malformed_index_is_an_archive_error(content):
    with pytest.raises(ArchiveError):
        list(tarindex.parse_rows(content))


def test_the_index_member_name_follows_the_archive_name():
    assert tarindex.index_member_name("dataset.tar") == b"dataset.tarindex.csv"
    assert tarindex.index_member_name("/x/shard-1.tar", b"data") == b"data/shard-1.tarindex.csv"
    assert tarindex.index_member_name("plain") == b"plain.tarindex.csv"


@pytest.mark.parametrize("count", [0, 1, 7, 300])
def test_the_index_member_is_found_from_the_tail_alone(count):
    tape = MemoryTape(index_member=True, mtime=1_700_000_000)
    for i in range(count):
        tape.add_bytes(f"seg/{i:04d}.csv", b"%d," % i * (i % 50))
    full = tape.read(0, tape.total_size)
    end = tarindex.data_end(full, 0)
    header = tarindex.find_index_header(full[:end], 0, end)
    where = tarindex.check_index_header(full[header : header + 512], header, end)
    index = list(tape.members())[-1]
    assert tarindex.guess_index_header(full[:end]) == (header if count else None)  # from the last row
    assert (where.header_offset, where.body_offset, where.size) == (index.offset, index.body_offset, index.size)
    # Every shorter tail that holds the header finds the same block; shorter ones ask for more.
    for start in range(0, end, 512):
        found = tarindex.find_index_header(full[start:end], start, end)
        assert found == (header if start <= header else None)


def test_the_guess_from_the_last_row_is_not_fooled_by_a_quoted_name():
    tape = MemoryTape(index_member=True, mtime=0)
    tape.add_bytes("a", b"x" * 700)
    tape.add_bytes('b,1,2,3,file,4\r\n"', b"y")
    full = tape.read(0, tape.total_size)
    end = tarindex.data_end(full, 0)
    assert tarindex.guess_index_header(full[:end]) == list(tape.members())[-1].offset


def test_an_archive_without_an_index_member_is_told_apart():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("a.bin")
        info.size = 700
        tar.addfile(info, io.BytesIO(bytes(range(256)) * 3))  # NUL bytes in the last body
    data = out.getvalue()
    end = tarindex.data_end(data, 0)
    assert tarindex.find_index_header(data[:end], 0, end) == tarindex.NOT_FOUND
