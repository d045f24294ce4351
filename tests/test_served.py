"""The mount's folder without FUSE: which name leads to which inode across switches, and
when a replaced inode is let go (tartapefs.served.Directory)."""

from __future__ import annotations

import hashlib

import pytest

from tartapefs.served import Directory, stable_inode

pytestmark = pytest.mark.pure


class Item:
    def __init__(self, data: bytes, mtime: int = 1_600_000_000) -> None:
        self.data = data
        self.total_size = len(data)
        self.mtime = mtime
        self.fingerprint = hashlib.sha256(data).hexdigest()

    def __repr__(self) -> str:
        return f"Item({self.data!r})"


@pytest.fixture
def dropped() -> list:
    return []


def served(d: Directory, data: bytes, lookups: int = 0):
    """``x.tar`` served as ``data`` by ``d`` from now on, looked up ``lookups`` times: its entry."""
    d.switch({"x.tar": Item(data)})
    entry = d.by_name[b"x.tar"]
    for _ in range(lookups):
        d.looked_up(entry)
    return entry


def test_a_switch_says_what_changed_by_name(dropped):
    d = Directory(dropped.append)
    first = d.switch({"a.tar": Item(b"a"), "b.tar": Item(b"b"), "c.tar": Item(b"c")})
    assert sorted(first.added) == ["a.tar", "b.tar", "c.tar"] and first.switched
    b, c = d.by_name[b"b.tar"], d.by_name[b"c.tar"]
    d.looked_up(b)
    d.looked_up(c)
    d.looked_up(d.by_name[b"a.tar"])
    second = d.switch({"a.tar": Item(b"a"), "b.tar": Item(b"B"), "d.tar": Item(b"d")})
    assert (second.kept, second.changed, second.added, second.removed) == (["a.tar"], ["b.tar"], ["d.tar"], ["c.tar"])
    # The kernel's lookups of b and c are wrong now; a kept name's and a new one's are not.
    assert second.switched and sorted(second.stale) == [b"b.tar", b"c.tar"]
    assert d.listing == (b"a.tar", b"b.tar", b"d.tar")
    assert d.by_name[b"b.tar"].inode != b.inode
    assert {i.data for i in dropped} == {b"a"}  # the kept name's old item: no handle held it
    d.forget(b.inode, 1)
    d.forget(c.inode, 1)
    assert {i.data for i in dropped} == {b"a", b"b", b"c"} and d.inode(b.inode) is d.inode(c.inode) is None
    third = d.switch({"a.tar": Item(b"A")})  # a's inode, kept from the first switch, is known
    assert third.stale == [b"a.tar"] and sorted(third.changed + third.removed) == ["a.tar", "b.tar", "d.tar"]


def test_the_same_items_again_switch_nothing_and_keep_every_inode(dropped):
    d = Directory(dropped.append)
    d.switch({"a.tar": Item(b"a"), "b.tar": Item(b"b")})
    inodes = {n: e.inode for n, e in d.by_name.items()}
    again = d.switch({"a.tar": Item(b"a"), "b.tar": Item(b"b")})
    assert not again.switched and sorted(again.kept) == ["a.tar", "b.tar"] and again.stale == []
    assert {n: e.inode for n, e in d.by_name.items()} == inodes
    assert len(dropped) == 2  # the old items: new opens read the new ones


def test_a_replaced_inode_answers_while_the_kernel_knows_it_and_a_handle_holds_it(dropped):
    d = Directory(dropped.append)
    old = served(d, b"old", lookups=2)
    old_item = old.item
    old.handles = 1
    served(d, b"new")
    assert d.inode(old.inode) is old and not old.current and dropped == []
    d.forget(old.inode, 2)
    assert d.inode(old.inode) is old and dropped == []  # an open handle still reads (and fstats) it
    old.handles = 0
    d.drop_if_unused(old)
    assert d.inode(old.inode) is None and dropped == [old_item]
    d.drop_if_unused(old)
    assert dropped == [old_item]  # once


def test_forgetting_part_of_the_lookups_keeps_the_inode(dropped):
    d = Directory(dropped.append)
    old = served(d, b"old", lookups=3)
    served(d, b"new")
    d.forget(old.inode, 2)
    assert d.inode(old.inode) is old
    d.forget(old.inode, 1)
    assert d.inode(old.inode) is None and len(dropped) == 1


def test_current_entries_are_never_dropped(dropped):
    d = Directory(dropped.append)
    entry = served(d, b"x", lookups=1)
    d.forget(entry.inode, 1)
    assert d.inode(entry.inode) is entry and dropped == []


def test_a_name_back_to_earlier_bytes_takes_over_the_inode_still_held(dropped):
    d = Directory(dropped.append)
    one = served(d, b"one", lookups=1)
    first = one.item
    served(d, b"two")
    back = d.switch({"x.tar": Item(b"one")})
    assert back.changed == ["x.tar"]
    assert d.by_name[b"x.tar"].inode == one.inode and d.inode(one.inode) is d.by_name[b"x.tar"]
    assert first in dropped


def test_a_collision_or_a_bad_name_changes_nothing(dropped, monkeypatch):
    d = Directory(dropped.append)
    d.switch({"x.tar": Item(b"x")})
    before = (dict(d.by_name), d.listing)
    with pytest.raises(ValueError):
        d.switch({"x.tar": Item(b"y"), "a/b": Item(b"z")})
    import tartapefs.served as served

    monkeypatch.setattr(served, "stable_inode", lambda name, item: 7)
    with pytest.raises(ValueError, match="collides"):
        d.switch({"x.tar": Item(b"y"), "z.tar": Item(b"z")})
    assert (dict(d.by_name), d.listing) == before and dropped == []


def test_a_plan_made_beforehand_touches_nothing_and_switches_as_the_items_would(dropped):
    d, e = Directory(dropped.append), Directory()
    for folder in (d, e):
        folder.switch({"a.tar": Item(b"a"), "b.tar": Item(b"b")})
        folder.looked_up(folder.by_name[b"b.tar"])
    before = (dict(d.by_name), d.listing)
    items = {"b.tar": Item(b"B"), "a.tar": Item(b"a"), "c.tar": Item(b"c")}
    planned = Directory.plan(items)
    assert (dict(d.by_name), d.listing) == before and dropped == []
    by_plan, by_items = d.switch(planned), e.switch(items)
    assert by_plan == by_items and by_plan.changed == ["b.tar"] and by_plan.stale == [b"b.tar"]
    assert d.listing == e.listing == (b"a.tar", b"b.tar", b"c.tar")
    assert {n: x.inode for n, x in d.by_name.items()} == {n: x.inode for n, x in e.by_name.items()}
    assert all(d.by_name[x.name] is x for x in planned.entries)


def test_a_plan_colliding_with_an_inode_still_held_changes_nothing(dropped, monkeypatch):
    d = Directory(dropped.append)
    d.switch({"x.tar": Item(b"x")})
    import tartapefs.served as served

    monkeypatch.setattr(served, "stable_inode", lambda name, item: d.by_name[b"x.tar"].inode)
    planned = Directory.plan({"y.tar": Item(b"y")})  # alone, nothing collides
    before = (dict(d.by_name), d.listing)
    with pytest.raises(ValueError, match="collides"):
        d.switch(planned)
    assert (dict(d.by_name), d.listing) == before and dropped == []


def test_the_inode_stands_for_name_fingerprint_size_and_mtime():
    base = stable_inode("x.tar", Item(b"abc", 5))
    assert base == stable_inode("x.tar", Item(b"abc", 5)) > 1
    assert len({base, stable_inode("y.tar", Item(b"abc", 5)), stable_inode("x.tar", Item(b"abd", 5)),
                stable_inode("x.tar", Item(b"abc", 6))}) == 4


def test_known_says_whether_the_kernel_holds_a_lookup_of_the_entry(dropped):
    d = Directory(dropped.append)
    entry = served(d, b"x", lookups=1)
    assert d.known(entry) and not d.known(None)
    d.forget(entry.inode, 1)
    assert not d.known(entry)
