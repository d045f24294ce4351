"""Pure tier: the plan cuts a recording into tapes (whole, shards, volumes) without I/O.

The property tests build random trees of members in memory (random folders,
sample keys, extensions, sizes, hard links, one sample bigger than the shard
size), plan them into shards, and check every WebDataset rule and every
standalone-shard rule on the result; each shard's bytes are also read by
Python's tarfile.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tartapefs import format as fmt
from tartapefs import tarindex
from tartapefs.layout import Member, archive_name
from tartapefs.plan import (PlannedTape, PlanOptions, plan, sample_key, sample_order, succeeding, tape_name,
                            volume_name, volume_ranges, wids_index, wids_key)
from tartapefs.plansink import PlanSink

pytestmark = pytest.mark.pure

MTIME = 1_700_000_000 * 10**9


def header(prefix: bytes, source: bytes, kind: str, size: int = 0, linkname: bytes = b"", mtime=MTIME):
    return fmt.Header(archive_name(prefix, source, kind), kind, size, 0o755 if kind == fmt.DIR else 0o644,
                      mtime, linkname, 0, 0, b"", b"")


def member(prefix: bytes, source: bytes, kind: str, size: int = 0, linkname: bytes = b"", ino: int = 0,
           mtime=MTIME) -> Member:
    h = header(prefix, source, kind, size, linkname, mtime)
    return Member(h, 0, fmt.header_size(h), source, ino, 1, mtime)


# -- random trees ------------------------------------------------------------------------------

names = st.sampled_from([b"a", b"b", b"c", b"x1", b"long" * 30])
extensions = st.sampled_from([b"", b".jpg", b".cls", b".txt", b".seg.png", b".d"])
sizes = st.sampled_from([0, 1, 511, 512, 513, 3000, 9000, 40000])


@st.composite
def trees(draw, depth=0):
    """A folder: {name: size (file) or dict (folder)}."""
    tree = {}
    for _ in range(draw(st.integers(0, 6 if depth < 2 else 3))):
        name = draw(names) + draw(extensions)
        if depth < 3 and draw(st.integers(0, 4)) == 0:
            tree[name] = draw(trees(depth=depth + 1))
        else:
            tree[name] = draw(sizes)
    return tree


def walk(tree: dict, prefix: bytes = b"data", link_every: int = 0):
    """The members of ``tree`` in the sharded walk order, and each file's size.
    Every ``link_every``-th file (if set) is a hard link to the first file."""
    out = [member(prefix, b"", fmt.DIR)]
    first_file: list[Member] = []
    sizes: dict[bytes, int] = {}
    counter = [0]

    def visit(folder: dict, path: bytes) -> None:
        for name in sorted(folder, key=lambda n: sample_order(n, isinstance(folder[n], dict))):
            source = path + b"/" + name if path else name
            value = folder[name]
            if isinstance(value, dict):
                out.append(member(prefix, source, fmt.DIR))
                visit(value, source)
                continue
            counter[0] += 1
            sizes[source] = value
            if first_file and link_every and counter[0] % link_every == 0:
                target = first_file[0]
                out.append(member(prefix, source, fmt.HARDLINK, 0, target.name, ino=target.ino))
                sizes[source] = target.size
            else:
                out.append(member(prefix, source, fmt.FILE, value, ino=counter[0]))
                if not first_file:
                    first_file.append(out[-1])

    visit(tree, b"")
    return out, sizes


def shards_of(placed: list[Member], tapes) -> list[list[Member]]:
    """The placed members of each tape, offsets made local."""
    out = []
    for t in tapes:
        inside = [m for m in placed if t.start <= m.offset < t.start + t.total_size]
        out.append([m._replace(offset=m.offset - t.start) for m in inside])
    return out


def shard_bytes(members: list[Member], sizes_by_source: dict[bytes, int]) -> bytes:
    """The archive's bytes with bodies of a repeated byte (content is not the plan's concern)."""
    out = bytearray()
    for m in members:
        out += fmt.encode_header(m.header)
        out += bytes([65]) * m.size + bytes(-m.size % 512)
    return bytes(out + fmt.FOOTER)


def parent(source: bytes) -> bytes:
    return source.rpartition(b"/")[0]


def ancestors(source: bytes) -> list[bytes]:
    out = [b""]
    parts = source.split(b"/")[:-1]
    for i in range(len(parts)):
        out.append(b"/".join(parts[: i + 1]))
    return out


@settings(max_examples=150, deadline=None)
@given(trees(), st.sampled_from([10 << 10, 12 << 10, 20 << 10, 64 << 10]),
       st.one_of(st.none(), st.integers(1, 8)), st.integers(0, 5))
def test_shards_keep_samples_whole_and_extract_alone(tree, limit, max_members, link_every):
    tree[b"huge.bin"] = 3 * limit  # one sample bigger than the shard size
    recorded, sizes = walk(tree, link_every=link_every)
    placed, tapes = plan(recorded, "data", PlanOptions(limit, max_members), sizes)
    shards = shards_of(placed, tapes)
    assert sum(len(s) for s in shards) == len(placed)
    assert [t.name for t in tapes] == [tape_name("data", i) for i in range(len(tapes))]
    position: dict[bytes, tuple[int, int]] = {}  # non-directory source -> (shard, index)
    for number, (tape, members) in enumerate(zip(tapes, shards)):
        # Offsets from 0, back to back, the footer counted in the total.
        end = 0
        for m in members:
            assert m.offset == end
            end = m.end
        assert tape.total_size == end + 1024 and tape.member_count == len(members)
        if number:
            assert tape.start == tapes[number - 1].start + tapes[number - 1].total_size
        # Standalone: every folder above a member comes before it in the same shard.
        seen_dirs: set[bytes] = set()
        seen_files: set[bytes] = set()
        for i, m in enumerate(members):
            for folder in ancestors(m.source) if m.source else []:
                assert folder in seen_dirs, (number, m.name, folder)
            if m.kind == fmt.DIR:
                seen_dirs.add(m.source)
                continue
            if m.kind == fmt.HARDLINK:
                assert m.linkname in seen_files, "a link to a file outside its shard"
            if m.kind == fmt.FILE:
                seen_files.add(m.name)
            assert m.source not in position, "a file in two places"
            position[m.source] = (number, i)
        # No shard over the limits unless one sample (with its folders) alone is in it.
        samples = {(parent(m.source), sample_key(m.source.rpartition(b"/")[2]))
                   for m in members if m.kind != fmt.DIR}
        over = tape.total_size > limit or (max_members and len(members) > max_members)
        if over:
            assert len(samples) <= 1, (number, samples)
        # Each shard is a tar archive tarfile reads alone.
        data = shard_bytes(members, sizes)
        assert len(data) == tape.total_size
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert len(tf.getmembers()) == len(members)
    # Every recorded non-directory member is placed exactly once, in walk order.
    files = [m for m in recorded if m.kind != fmt.DIR]
    assert [position[m.source] for m in files] == sorted(position[m.source] for m in files)
    assert set(position) == {m.source for m in files}
    # A sample's files are consecutive in one shard.
    by_sample: dict[tuple[bytes, bytes], list[tuple[int, int]]] = {}
    for m in files:
        by_sample.setdefault((parent(m.source), sample_key(m.source.rpartition(b"/")[2])), []).append(
            position[m.source])
    for key, places in by_sample.items():
        assert len({s for s, _ in places}) == 1, key
        indexes = [i for _, i in places]
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), key
    # Every folder is in the last shard that holds something below it (its mtime is restored last).
    for m in recorded:
        if m.kind == fmt.DIR:
            holders = [n for n, members in enumerate(shards) if any(o.source == m.source for o in members)]
            below = [n for n, members in enumerate(shards)
                     if any(o.source.startswith(m.source + b"/") or (not m.source and o.source) for o in members)]
            assert holders and (not below or max(below) in holders)


@settings(max_examples=60, deadline=None)
@given(trees(), st.integers(0, 4))
def test_a_whole_tape_is_the_walk_back_to_back(tree, link_every):
    recorded, sizes = walk(tree, link_every=link_every)
    placed, tapes = plan(recorded, "photos")
    assert len(tapes) == 1 and tapes[0].name == "photos.tar" and tapes[0].start == 0
    assert [m.header for m in placed] == [m.header for m in recorded]
    end = 0
    for m in placed:
        assert m.offset == end
        end = m.end
    assert tapes[0].total_size == end + 1024 == len(shard_bytes(placed, sizes))


def test_a_hard_link_whose_file_went_to_an_earlier_shard_becomes_that_file():
    recorded = [member(b"d", b"", fmt.DIR), member(b"d", b"a.bin", fmt.FILE, 9000, ino=7),
                member(b"d", b"b.bin", fmt.HARDLINK, 0, b"d/a.bin", ino=7),
                member(b"d", b"c.bin", fmt.HARDLINK, 0, b"d/a.bin", ino=7)]
    placed, tapes = plan(recorded, "d", PlanOptions(shard_size=10 << 10), {b"b.bin": 9000, b"c.bin": 9000})
    shards = shards_of(placed, tapes)
    assert [[(m.name, m.kind) for m in s] for s in shards] == [
        [(b"d/", "dir"), (b"d/a.bin", "file")],
        [(b"d/", "dir"), (b"d/b.bin", "file")],
        [(b"d/", "dir"), (b"d/c.bin", "file")],
    ]
    assert all(s[1].size == 9000 and s[1].linkname == b"" for s in shards)


def test_a_link_within_its_shard_stays_a_link():
    recorded = [member(b"d", b"", fmt.DIR), member(b"d", b"a.bin", fmt.FILE, 10, ino=7),
                member(b"d", b"b.bin", fmt.HARDLINK, 0, b"d/a.bin", ino=7)]
    placed, tapes = plan(recorded, "d", PlanOptions(shard_size=10 << 10), {b"b.bin": 10})
    assert len(tapes) == 1 and placed[2].kind == fmt.HARDLINK


def test_shard_members_counts_every_member_of_a_shard():
    recorded = [member(b"d", b"", fmt.DIR)] + [member(b"d", b"%d.txt" % i, fmt.FILE, 1) for i in range(7)]
    placed, tapes = plan(recorded, "d", PlanOptions(shard_members=3))
    assert [t.member_count for t in tapes] == [3, 3, 3, 2]  # the folder is repeated in each
    assert [t.nsamples for t in tapes] == [2, 2, 2, 1]


def test_sample_order_keeps_a_sample_together_where_byte_order_would_not():
    names = [b"a.jpg", b"a", b"a-1.jpg", b"a.txt", b"a.d", b"b.cls"]
    dirs = {b"a.d"}
    assert sorted(names) == [b"a", b"a-1.jpg", b"a.d", b"a.jpg", b"a.txt", b"b.cls"]
    ordered = sorted(names, key=lambda n: sample_order(n, n in dirs))
    assert ordered == [b"a", b"a.jpg", b"a.txt", b"a.d", b"a-1.jpg", b"b.cls"]


def test_wids_keys_follow_wids_own_split():
    assert wids_key(b"data/x/img1.seg.png") == b"data/x/img1"
    assert wids_key(b"data/x/README") is None or wids_key(b"data/x/README") == b"data/x/README"
    assert wids_key(b"data/README") is None


def test_fingerprints_differ_between_shards_and_from_the_whole_tape():
    recorded = [member(b"d", b"", fmt.DIR)] + [member(b"d", b"%d.txt" % i, fmt.FILE, 5000) for i in range(6)]
    _, whole = plan(recorded, "d")
    _, shards = plan(recorded, "d", PlanOptions(shard_size=16 << 10))
    _, again = plan(recorded, "d", PlanOptions(shard_size=16 << 10))
    _, capped = plan(recorded, "d", PlanOptions(shard_size=16 << 10, shard_members=3))
    assert len(shards) == 3 and shards == again and [t.member_count for t in shards] == [3, 3, 3]
    assert len({t.fingerprint for t in shards} | {whole[0].fingerprint}) == 4
    # Same bytes, other options: the options are part of every shard's fingerprint.
    assert [t.total_size for t in capped] == [t.total_size for t in shards]
    assert not {t.fingerprint for t in capped} & {t.fingerprint for t in shards}


@pytest.mark.parametrize("total,split,expect", [
    (30000, 10240, [(0, 10240), (10240, 10240), (20480, 9520)]),
    (20480, 10240, [(0, 10240), (10240, 10240)]),
    (1024, 10240, [(0, 1024)]),
])
def test_volumes_cover_the_tape_exactly(total, split, expect):
    assert volume_ranges(total, split) == expect


def test_volume_names_have_one_width_as_ratarmount_joins_them():
    assert [volume_name("a.tar", i, 3) for i in range(3)] == ["a.tar.001", "a.tar.002", "a.tar.003"]
    assert volume_name("a.tar", 0, 1200) == "a.tar.0001" and volume_name("a.tar", 1199, 1200) == "a.tar.1200"


def test_wids_index_lists_every_shard_relative_to_itself():
    doc = json.loads(wids_index([("p-000000.tar", 3, 10240), ("p-000001.tar", 1, 2048)]))
    assert doc["__kind__"] == "wids-shard-index-v1" and doc["wids_version"] == 1
    assert doc["shardlist"] == [{"url": "p-000000.tar", "nsamples": 3, "filesize": 10240},
                                {"url": "p-000001.tar", "nsamples": 1, "filesize": 2048}]


class Collect(PlanSink):
    """Every tape's index member bytes and members, as a recorder gets them."""

    def __init__(self) -> None:
        self.csv: dict[int, bytes] = {}
        self.members: dict[int, list[Member]] = {}
        self.closed_tapes: list[int] = []

    def placed(self, tape: int, members: list[Member], csv: bytes) -> None:
        assert tape not in self.closed_tapes
        self.csv[tape] = self.csv.get(tape, b"") + csv
        self.members.setdefault(tape, []).extend(members)

    def closed(self, tape) -> None:
        self.closed_tapes.append(tape.number)


@settings(max_examples=80, deadline=None)
@given(trees(), st.sampled_from([None, 10 << 10, 20 << 10]), st.one_of(st.none(), st.integers(2, 8)),
       st.integers(0, 5))
def test_an_index_member_ends_every_tape_lists_the_others_and_counts_against_the_limits(
        tree, limit, max_members, link_every):
    tree[b"huge.bin"] = 30000  # one sample bigger than a shard
    recorded, sizes = walk(tree, link_every=link_every)
    options = PlanOptions(limit, max_members, index_member=True, ratarmount_index=True)
    sink = Collect()
    placed, tapes = plan(recorded, "data", options, sizes, prefix=b"data", sink=sink)
    assert sink.closed_tapes == [t.number for t in tapes]
    for tape, members in zip(tapes, shards_of(placed, tapes)):
        *others, index = members
        assert index.generated and not any(m.generated for m in others)
        name = tarindex.index_member_name(tape.name, b"data")
        assert index.name == name and index.source == name[len(b"data/"):]
        assert tape.index_member == tape.start + index.offset and index.end + 1024 == tape.total_size
        assert sink.csv[tape.number] == tarindex.index_csv(others) and index.size == len(sink.csv[tape.number])
        assert sink.members[tape.number] == members  # local offsets, the index member last
        assert index.mtime == max([0] + [m.mtime for m in others])
        data = shard_bytes(members, sizes)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert [m.offset_data for m in tf.getmembers()] == [m.body_offset for m in members]
        if options.sharded:
            samples = {(parent(m.source), sample_key(m.source.rpartition(b"/")[2]))
                       for m in others if m.kind != fmt.DIR}
            if (limit and tape.total_size > limit) or (max_members and len(members) > max_members):
                assert len(samples) <= 1, (tape.number, samples)


def test_plan_options_keep_the_fingerprints_of_plans_without_the_new_options():
    assert PlanOptions(1 << 20).bytes_json() == json.dumps({"shard_members": None, "shard_size": 1 << 20})
    assert PlanOptions.from_json(PlanOptions(5, None, True, True).to_json()) == PlanOptions(5, None, True, True)
    assert PlanOptions.from_json(PlanOptions(5).to_json()) == PlanOptions(5)
    assert "ratarmount" not in PlanOptions(5, None, True, True).bytes_json()  # no byte of a tape
    recorded = [member(b"d", b"", fmt.DIR)] + [member(b"d", b"%d.txt" % i, fmt.FILE, 50) for i in range(3)]
    _, plain = plan(recorded, "d")
    _, sidecar = plan(recorded, "d", PlanOptions(ratarmount_index=True))
    _, indexed = plan(recorded, "d", PlanOptions(index_member=True), prefix=b"d")
    assert plain == sidecar and indexed[0].fingerprint != plain[0].fingerprint


def test_a_tape_that_follows_another_gets_a_later_mtime_only_when_its_bytes_changed():
    def tape(name: str, fingerprint: str, mtime: int) -> PlannedTape:
        return PlannedTape(0, name, 0, 1024, 0, fingerprint, mtime, 0)

    previous = {"same.tar": ("f1", 500), "changed.tar": ("f2", 500), "newer.tar": ("f3", 500)}
    tapes = [tape("same.tar", "f1", 400), tape("changed.tar", "F2", 500), tape("newer.tar", "F3", 900),
             tape("fresh.tar", "f4", 300)]
    assert [t.mtime for t in succeeding(tapes, previous)] == [
        500,  # the same bytes: the same file as before, whatever its members say now
        501,  # other bytes, no newer member (a mode changed): one second past the previous
        900,  # other bytes and a newer member: the member's
        300,  # nothing before it: its newest member's
    ]
    assert succeeding(tapes, {}) == tapes
