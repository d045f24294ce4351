"""The sealing thread (tartapefs._seal, csrc/seal.c): age chunks sealed in C, off the GIL.

Its output is checked against the ``cryptography`` package's ChaCha20-Poly1305 (an independent
implementation of the cipher), and reads begun through it against plain reads; the mount tests
(test_mount_encrypted.py) check what it serves against the real ``age -d``.
"""

from __future__ import annotations

import ctypes.util
import os
import random
import select

import pytest

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from tartapefs import age, native  # noqa: E402
from tartapefs.bytesource import Memory  # noqa: E402
from tartapefs.encrypt import EncryptedReader, EncryptionState, _sealing_thread  # noqa: E402

try:
    from tartapefs import _seal
except ImportError:
    _seal = None

from test_native import compiler_available  # noqa: E402

pytestmark = pytest.mark.pure
needs_seal = pytest.mark.skipif(_seal is None, reason="tartapefs._seal is not built or libcrypto is missing")
# EncryptedReader uses the thread only on the compiled path (TARTAPEFS_PURE=1 turns it off too).
needs_thread = pytest.mark.skipif(_seal is None or native.module is None, reason="no sealing thread here")
CHUNK = age.CHUNK


def wait(job) -> None:
    select.select([job.fileno()], [], [], 10)


def chunks_of(plain: bytes) -> list[bytes]:
    return [plain[i:i + CHUNK] for i in range(0, len(plain), CHUNK)] or [b""]


@pytest.mark.skipif(not compiler_available() or ctypes.util.find_library("crypto") is None
                    or native.module is None, reason="no compiler, no libcrypto, or the pure path")
def test_a_checkout_with_a_compiler_and_libcrypto_builds_the_sealing_thread():
    assert _seal is not None, "tartapefs._seal was not built although a compiler and libcrypto are here"
    assert _sealing_thread() is _seal


@needs_seal
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
@pytest.mark.parametrize("final", [False, True])
def test_sealed_chunks_equal_cryptography_s(size, final):
    key, plain = os.urandom(32), os.urandom(size)
    first = 7
    count = len(chunks_of(plain))
    last_index = first + count - 1 + (0 if final else 3)
    dests = [bytearray(len(c) + 16) for c in chunks_of(plain)]
    job = _seal.start(key, first, last_index, plain, dests)
    wait(job)
    job.finish()
    aead = ChaCha20Poly1305(key)
    for i, chunk in enumerate(chunks_of(plain)):
        index = first + i
        nonce = index.to_bytes(11, "big") + (b"\x01" if index == last_index else b"\x00")
        assert bytes(dests[i]) == aead.encrypt(nonce, chunk, None)


@needs_seal
def test_start_refuses_a_bad_key_a_wrong_count_or_size_and_read_only_destinations():
    plain = bytes(CHUNK + 1)
    good = [bytearray(CHUNK + 16), bytearray(17)]
    with pytest.raises(ValueError):
        _seal.start(bytes(31), 0, 1, plain, good)
    with pytest.raises(ValueError):
        _seal.start(bytes(32), 0, 1, plain, good[:1])
    with pytest.raises(ValueError):
        _seal.start(bytes(32), 0, 1, plain, [bytearray(CHUNK + 16), bytearray(16)])
    with pytest.raises(ValueError):
        _seal.start(bytes(32), 5, 5, plain, good)  # two chunks cannot both be before the final one
    with pytest.raises((BufferError, TypeError)):
        _seal.start(bytes(32), 0, 1, plain, [bytes(CHUNK + 16), bytearray(17)])
    job = _seal.start(bytes(32), 0, 1, plain, good)
    job.finish()  # waits by itself
    with pytest.raises(ValueError):
        job.finish()


@pytest.fixture
def reader():
    state = EncryptionState.create([age.parse_recipient(KEY)])
    return EncryptedReader(Memory(random.Random(5).randbytes(5 * CHUNK + 1234)), state)


KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"  # the spec's example


@needs_thread
def test_reads_begun_together_and_finished_in_any_order_give_what_read_gives(reader):
    plain = EncryptedReader(reader.plain, reader.state, cache_chunks=0)
    rng = random.Random(14)
    ranges = [(0, 1 << 20)] + [(o, 1 << 20) for o in range(100, reader.total_size, 1 << 17)]
    ranges += [(rng.randrange(reader.total_size + 10), rng.randrange(3 * CHUNK)) for _ in range(200)]
    assert reader.begin_read(0, 1 << 20).fileno() is not None  # sealed on the thread, not here
    for batch in (ranges[i:i + 4] for i in range(0, len(ranges), 4)):
        pending = [reader.begin_read(o, n) for o, n in batch]
        for (o, n), p in reversed(list(zip(batch, pending))):
            assert p.result() == plain.read(o, n), (o, n)


@needs_thread
def test_a_read_dropped_before_its_sealing_ended_leaves_the_reader_right(reader):
    expected = EncryptedReader(reader.plain, reader.state, cache_chunks=0).read(0, reader.total_size)
    for _ in range(20):
        reader.begin_read(0, reader.total_size)  # dropped at once: waits for its worker
    assert reader.begin_read(0, reader.total_size).result() == expected


@needs_thread
def test_a_forked_child_seals_on_a_thread_of_its_own(reader):
    expected = reader.read(CHUNK, 2 * CHUNK)
    left = reader.begin_read(CHUNK, 2 * CHUNK)  # may still be queued when the child is made
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = reader.begin_read(CHUNK, 2 * CHUNK).result() == expected
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert left.result() == expected
    assert os.waitstatus_to_exitcode(status) == 0
