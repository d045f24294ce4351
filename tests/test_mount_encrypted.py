"""Encrypted archives through real mounts: ``tartape-mount --encrypt-to`` serves
``NAME.tar.age``, which the stock ``age -d`` decrypts to the plaintext stream, whose bytes and
ranges equal ``tartape stream --encrypt-to``, whose size is the age formula, which stays the same
across mounts, fails with EIO for a changed source, and which rclone copies and resumes; the mount
reads ahead further than a plain one."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from agekit import TAG, CHUNK, age_decrypt, keygen, open_chunk
from mountutil import NEEDS_MOUNT, TARTAPE, pread_errno
from test_mount import build_transfer_tree
from test_shards import SHARD, build_sample_tree
from tartapefs import Recording
from tartapefs.fusefs import stable_inode
from trees import build_sparse_tree, tree_differences

pytestmark = NEEDS_MOUNT

AGE = "dataset.tar.age"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return [keygen(folder, f"key{i}.txt") for i in range(2)]


def stream(*args) -> bytes:
    return subprocess.run([*TARTAPE, "stream", *map(str, args)], capture_output=True, check=True).stdout


def plaintext(src: Path) -> bytes:
    with Recording.discover(str(src)) as recording:
        [tape] = recording.tapes()
        with tape.reader() as reader:
            return reader.read(0, tape.total_size)


def file_key(src: Path) -> bytes:
    with Recording.discover(str(src)) as recording:
        return recording.tapes()[0].encryption.file_key


def header_size(data: bytes) -> int:
    """The age header's length, read from the file itself: up to the end of the MAC line."""
    return data.index(b"\n", data.index(b"\n---") + 1) + 1


def test_age_decrypts_the_mounted_file_which_is_the_stream_output(mounts, tmp_path, keys):
    src = build_transfer_tree(tmp_path)
    sealed = stream(src, "--encrypt-to", keys[0].public, "--encrypt-to", keys[1].public)
    m = mounts.background(src, None, "--encrypt-to", keys[1].public, "--encrypt-to", keys[0].public)
    assert os.listdir(m.mnt) == [AGE]
    served = m.mnt / AGE
    assert served.read_bytes() == sealed  # the same recipients: the recording is reused
    plain = plaintext(src)
    for key in keys:
        done = subprocess.run(["age", "-d", "-i", str(key.path), str(served)], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout == plain
    out = tmp_path / "out"
    out.mkdir()
    piped = subprocess.run(f"age -d -i {keys[0].path} {served} | tar -x -C {out}", shell=True, capture_output=True)
    assert piped.returncode == 0, piped.stderr
    assert tree_differences(src, out / "data") == []
    # st_size is the age formula, from the file's own header: header + nonce + data + tags
    st = os.stat(served)
    chunks = -(-len(plain) // CHUNK)
    assert st.st_size == header_size(sealed) + 16 + len(plain) + TAG * chunks == len(sealed)
    assert st.st_blocks == -(-st.st_size // 512)
    with Recording.discover(str(src)) as recording:
        assert st.st_mtime == recording.tapes()[0].mtime and st.st_ino == stable_inode(AGE, recording.tapes()[0].encrypted())


@pytest.mark.parametrize("direct_io", [False, True], ids=["buffered", "direct_io"])
def test_2000_random_ranges_of_the_mounted_file_equal_the_stream_output(mounts, tmp_path, keys, direct_io):
    src = build_transfer_tree(tmp_path)
    sealed = stream(src, "--encrypt-to", keys[0].public)
    m = mounts.background(src, None, "--encrypt-to", keys[0].public, *(["--direct-io"] if direct_io else []))
    rng = random.Random(14)
    size = len(sealed)
    head = header_size(sealed) + 16
    edges = [head + i * (CHUNK + TAG) for i in range(size // (CHUNK + TAG) + 1)]  # chunk starts
    fd = os.open(m.mnt / AGE, os.O_RDONLY)
    try:
        for i in range(2000):
            if i % 4 == 0:  # around a chunk boundary, the header or the end
                offset = max(0, rng.choice(edges + [head, size]) + rng.randrange(-40, 40))
            else:
                offset = rng.randrange(size + 10)
            count = rng.choice([1, 15, 16, 17, 4096, CHUNK, CHUNK + TAG, 1 << 20, rng.randrange(1, 400_000)])
            assert os.pread(fd, count, offset) == sealed[offset:offset + count], (offset, count)
    finally:
        os.close(fd)


def test_a_multi_gib_sparse_member_has_the_formula_size_through_the_mount(mounts, tmp_path, keys):
    root, small = build_sparse_tree(tmp_path)
    m = mounts.foreground(root, None, "--encrypt-to", keys[0].public, name=AGE)
    with Recording.discover(str(root)) as recording:
        [tape] = recording.tapes()
        state = tape.encryption
        with tape.reader() as reader:
            last = -(-tape.total_size // CHUNK) - 1
            expect_last = reader.read(last * CHUNK, tape.total_size - last * CHUNK)
            expect_first = reader.read(0, CHUNK)
    assert tape.total_size > 8 << 30
    st = os.stat(m.file)
    assert st.st_size == state.header_size + 16 + tape.total_size + TAG * (last + 1)
    fd = os.open(m.file, os.O_RDONLY)
    try:
        start = state.header_size + 16
        assert os.pread(fd, state.header_size, 0) == state.header
        first = os.pread(fd, CHUNK + TAG, start)
        final = os.pread(fd, CHUNK + TAG, start + last * (CHUNK + TAG))
    finally:
        os.close(fd)
    nonce = state.payload_nonce
    assert open_chunk(state.file_key, nonce, 0, first, False) == expect_first
    assert open_chunk(state.file_key, nonce, last, final, True) == expect_last  # sealed as the final chunk
    assert small in expect_last and expect_last.endswith(bytes(1024))


def test_two_mounts_of_one_recording_give_identical_bytes(mounts, tmp_path, keys):
    src = build_transfer_tree(tmp_path)
    first = mounts.background(src, None, "--encrypt-to", keys[0].public)
    st1, data1 = os.stat(first.mnt / AGE), (first.mnt / AGE).read_bytes()
    first.stop()
    # without the option the recording is served as recorded: encrypted, the same bytes
    second = mounts.background(src, first.mnt)
    st2 = os.stat(second.mnt / AGE)
    assert (st2.st_size, st2.st_mtime_ns, st2.st_ino) == (st1.st_size, st1.st_mtime_ns, st1.st_ino)
    assert (second.mnt / AGE).read_bytes() == data1
    assert age_decrypt(data1, keys[0]).stdout == plaintext(src)


def read_ahead_kb(mnt: Path) -> int:
    """The kernel read-ahead of the mount at ``mnt``, in KiB."""
    dev = os.stat(mnt).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text())


def test_an_encrypted_mount_reads_ahead_four_times_as_far_as_a_plain_one(mounts, tmp_path, keys):
    # Each encrypted request costs the daemon its sealing too: more requests queued at once
    # keep a sequential reader from waiting on each (docs/BENCHMARKS.md, "Encrypted archives").
    src = build_transfer_tree(tmp_path)
    encrypted = mounts.background(src, None, "--encrypt-to", keys[0].public)
    plain = mounts.background(src, None, "--index", str(tmp_path / "plain.db"))
    assert read_ahead_kb(encrypted.mnt) == 4096 and (encrypted.mnt / AGE).exists()
    assert read_ahead_kb(plain.mnt) == 1024 and (plain.mnt / "dataset.tar").exists()


def test_other_recipients_at_mount_record_again_with_a_new_key(mounts, tmp_path, keys):
    src = build_transfer_tree(tmp_path)
    stream(src, "--encrypt-to", keys[0].public)
    before = file_key(src)
    m = mounts.background(src, None, "--encrypt-to", keys[1].public)
    data = (m.mnt / AGE).read_bytes()
    assert file_key(src) != before
    assert age_decrypt(data, keys[0]).returncode != 0
    assert age_decrypt(data, keys[1]).stdout == plaintext(src)


def test_a_changed_source_fails_with_eio_through_the_encrypted_file(mounts, tmp_path, keys):
    src = build_transfer_tree(tmp_path)
    sealed = stream(src, "--encrypt-to", keys[0].public)
    m = mounts.foreground(src, None, "--encrypt-to", keys[0].public, "--direct-io", name=AGE)
    with Recording.discover(str(src)) as recording:
        tape = recording.tapes()[0]
        two, one = tape.locate("data/big/two.bin"), tape.locate("data/big/one.bin")
        head = tape.encryption.header_size + 16
    with open(src / "big" / "two.bin", "r+b") as f:
        f.write(b"changed!")

    def where(offset: int) -> int:  # the ciphertext offset of a plaintext byte
        return head + offset // CHUNK * (CHUNK + TAG) + offset % CHUNK

    assert pread_errno(m.file, where(two.body_offset + 100_000), 4096) == errno.EIO
    assert pread_errno(m.file, where(two.offset), 512) == errno.EIO
    # every chunk that holds no byte of two.bin is still served, exactly
    fd = os.open(m.file, os.O_RDONLY)
    try:
        end = where(two.offset // CHUNK * CHUNK)  # the first chunk two.bin touches
        assert os.pread(fd, end, 0) == sealed[:end]
        tail = where(-(-two.body_range[1] // CHUNK) * CHUNK)
        assert os.pread(fd, len(sealed), tail) == sealed[tail:]
    finally:
        os.close(fd)
    assert one.body_offset < two.offset and m.proc.poll() is None
    lines = [line for line in m.log_text().splitlines() if "big/two.bin" in line]
    assert lines and "EIO" in lines[0]


def test_rclone_copies_in_parallel_and_resumes_an_encrypted_copy_byte_identically(mounts, tmp_path, keys):
    if not shutil.which("rclone"):
        pytest.fail("rclone missing: scripts/test installs it (scripts/lib.sh)")
    src = build_transfer_tree(tmp_path)
    sealed = stream(src, "--encrypt-to", keys[0].public)
    m = mounts.background(src, None, "--encrypt-to", keys[0].public)
    rclone = ["rclone", "--config", os.devnull]
    dst = tmp_path / "dst"
    done = subprocess.run([*rclone, "copy", "--multi-thread-streams", "4", "--multi-thread-cutoff", "1M", "-vv",
                           str(m.mnt / AGE), str(dst)], capture_output=True, text=True, check=True)
    assert "multi-thread copy" in done.stderr, done.stderr[-2000:]  # parallel ranged reads
    assert (dst / AGE).read_bytes() == sealed
    # An interrupted transfer keeps its first bytes; the rest is fetched from that offset.
    cut = len(sealed) // 2 + 12345
    partial = tmp_path / "partial.age"
    partial.write_bytes(sealed[:cut])
    with open(partial, "ab") as out:
        subprocess.run([*rclone, "cat", "--offset", str(cut), str(m.mnt / AGE)], stdout=out, check=True)
    assert hashlib.sha256(partial.read_bytes()).digest() == hashlib.sha256(sealed).digest()
    assert age_decrypt(partial.read_bytes(), keys[0]).stdout == plaintext(src)
    # After a remount the copy is up to date: same size and mtime, same content.
    m.stop()
    again = mounts.background(src, m.mnt)
    done = subprocess.run([*rclone, "copy", "-v", str(again.mnt / AGE), str(dst)], capture_output=True,
                          text=True, check=True)
    assert "Copied" not in done.stderr, done.stderr
    subprocess.run([*rclone, "check", str(again.mnt), str(dst)], capture_output=True, check=True)


def test_shards_volumes_and_several_folders_are_all_encrypted(mounts, tmp_path, keys):
    photos = build_sample_tree(tmp_path)
    scans = build_sample_tree(tmp_path / "x", "scans")
    m = mounts.foreground(photos, None, "--shard-size", str(SHARD), "--encrypt-to", keys[0].public,
                          name="photos-000000.tar.age", more=(scans,))
    with Recording.discover(str(photos)) as recording:
        shards = [t.name + ".age" for t in recording.tapes()]
    with Recording.discover(str(scans)) as recording:
        shards += [t.name + ".age" for t in recording.tapes()]
    assert len(shards) > 6
    assert sorted(os.listdir(m.mnt)) == sorted(shards)  # no plain shard lists beside them
    keys_seen = set()
    for name in shards:
        data = (m.mnt / name).read_bytes()
        opened = age_decrypt(data, keys[0])
        assert opened.returncode == 0 and opened.stdout[:100].startswith(name.split("-")[0].encode())
        keys_seen.add(data[:header_size(data)])
    assert len(keys_seen) == len(shards)  # every shard's own header: its own key
    whole = build_sample_tree(tmp_path / "y")
    v = mounts.foreground(whole, None, "--split", "100000", "--encrypt-to", keys[0].public, name=AGE + ".001")
    volumes = sorted(os.listdir(v.mnt))
    assert volumes == [f"{AGE}.{i:03d}" for i in range(1, len(volumes) + 1)] and len(volumes) > 2
    joined = subprocess.run(f"cat {v.mnt}/{AGE}.0* | age -d -i {keys[0].path}", shell=True, capture_output=True)
    assert joined.returncode == 0 and joined.stdout == plaintext(whole)
