"""Encrypted archives (tartapefs/encrypt.py): the per-recording state and EncryptedReader.

The real age decrypts what we write (a real tree's tape through TapeReader, then GNU tar
extracts the source); ranges equal the full ciphertext; a multi-GiB tape has its predicted size
and a final chunk sealed as final; the same state gives the same bytes, two states never the
same key; a changed source fails exactly as it does unencrypted; bad input is one line.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import tartapefs.encrypt as encrypt
from agekit import MemoryReader, ZeroReader, age_decrypt, keygen, open_chunk
from tartapefs import SourceChangedError, TapeReader, age
from tartapefs.age import CHUNK, TAG, RecipientError, parse_recipient
from tartapefs.encrypt import (AgeUnavailableError, EncryptedReader, EncryptionState,
                               ShortReadError, load_recipients, read_recipients_file)
from tartapefs.errors import IndexCorruptError, UsageError
from trees import build_sparse_tree, build_small_tree, content, record, tree_differences

pytestmark = pytest.mark.index

MiB = 1 << 20


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return [keygen(folder, f"key{i}.txt") for i in range(2)]


@pytest.fixture(scope="module")
def state(keys):
    return EncryptionState.create([parse_recipient(k.public) for k in keys])


def read_all(reader, step: int = MiB) -> bytes:
    return b"".join(reader.read(o, step) for o in range(0, reader.total_size, step))


# -- the real age decrypts what we write --------------------------------------------------


def test_age_decrypts_a_real_trees_tape_and_tar_extracts_the_source(hard_tree, hard_tape,
                                                                    hard_archive, keys, state,
                                                                    tmp_path):
    with EncryptedReader(TapeReader(hard_tape), state) as reader:
        assert reader.total_size == age.encrypted_size(len(hard_archive), state.header_size)
        sealed = read_all(reader)
    assert len(sealed) == reader.total_size
    for key in keys:  # every recipient opens it
        opened = age_decrypt(sealed, key)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout == hard_archive
    out = tmp_path / "out"
    out.mkdir()
    tar = subprocess.run(["tar", "-xpf", "-", "-C", str(out), "--warning=no-timestamp"],
                         input=opened.stdout, capture_output=True)
    assert tar.returncode == 0, tar.stderr
    assert tree_differences(hard_tree.root, out / hard_tree.root.name) == []


@pytest.mark.parametrize("plain", [0, 1, 65535, 65536, 65537, 3 * CHUNK, 3 * CHUNK + 5])
def test_age_decrypts_every_payload_length_around_the_chunk_size(plain, keys, state):
    data = random.Random(plain).randbytes(plain)
    reader = EncryptedReader(MemoryReader(data), state)
    sealed = reader.read(0, reader.total_size + 10)
    assert len(sealed) == reader.total_size == state.encrypted_size(plain)
    opened = age_decrypt(sealed, keys[0])
    assert opened.returncode == 0 and opened.stdout == data


# -- random access --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medium_tape(tmp_path_factory):
    """A recorded tree of a few MiB: files of odd sizes so members straddle chunk edges."""
    root = tmp_path_factory.mktemp("medium") / "data"
    root.mkdir()
    rng = random.Random(14)
    for i, size in enumerate([0, 1, 511, 65536, 65537, 200_000, 1_000_003, 2 * MiB + 77]):
        (root / f"f{i:02d}.bin").write_bytes(rng.randbytes(size))
    return record(root)


@pytest.mark.parametrize("cache_chunks", [8, 0])
def test_2000_random_ranges_equal_the_same_ranges_of_the_full_ciphertext(medium_tape, state,
                                                                         cache_chunks):
    with EncryptedReader(TapeReader(medium_tape), state) as whole:
        full = whole.read(0, whole.total_size)
    rng = random.Random(2000 + cache_chunks)
    total = len(full)
    edges = [age.chunk_offset(i, state.header_size) for i in range(age.chunk_count(
        medium_tape.total_size))]
    with EncryptedReader(TapeReader(medium_tape), state, cache_chunks=cache_chunks) as reader:
        offset = 0
        for i in range(2000):
            kind = i % 4
            if kind == 0:  # anywhere, any size up to 3 chunks
                offset, size = rng.randrange(total + 100), rng.randrange(3 * (CHUNK + TAG))
            elif kind == 1:  # around a chunk edge, small
                offset, size = max(0, rng.choice(edges) + rng.randrange(-40, 40)), rng.randrange(80)
            elif kind == 2:  # sequential 128 KiB requests, as the kernel reads a mount
                offset, size = (offset + 131072) % total, 131072
            else:  # the header, the nonce, the last bytes
                offset, size = rng.choice([0, state.header_size - 3, total - 20]), rng.randrange(60)
            assert reader.read(offset, size) == full[offset:offset + size], (offset, size)
            assert len(reader._cache) <= cache_chunks


def test_a_read_seals_only_the_chunks_it_touches(state):
    plain = MemoryReader(bytes(10 * CHUNK))
    reader = EncryptedReader(plain, state)
    start = age.chunk_offset(4, state.header_size)
    reader.read(start + 10, CHUNK + TAG)  # chunks 4 and 5 (sealed chunks are CHUNK + TAG)
    assert plain.reads == [(4 * CHUNK, 2 * CHUNK)]
    reader.read(start + 10 + CHUNK + TAG, 100)  # inside chunk 5, used in part before: kept
    assert len(plain.reads) == 1
    reader.read(0, state.header_size + 16)  # header and nonce only
    assert len(plain.reads) == 1


def test_without_encrypt_into_the_bytes_are_the_same(medium_tape, state):
    with EncryptedReader(TapeReader(medium_tape), state) as a, \
            EncryptedReader(TapeReader(medium_tape), state) as b:
        b._encrypt_into = None  # cryptography < 45 has no encrypt_into
        for offset, size in [(0, 3 * MiB), (12345, 777_777), (a.total_size - 99_999, MiB)]:
            assert a.read(offset, size) == b.read(offset, size)


def test_reads_outside_the_file_and_negative_arguments(state):
    reader = EncryptedReader(MemoryReader(b"abc"), state)
    assert reader.read(reader.total_size, 10) == b"" and reader.read(reader.total_size + 5, 1) == b""
    assert reader.read(3, 0) == b""
    for offset, size in [(-1, 5), (0, -1)]:
        with pytest.raises(UsageError, match="negative"):
            reader.read(offset, size)


# -- size ------------------------------------------------------------------------------------


def test_a_multi_gib_plaintext_has_the_predicted_size_and_a_final_last_chunk(state):
    plain = 5 * (1 << 30) + 12345
    reader = EncryptedReader(ZeroReader(plain), state)
    chunks = -(-plain // CHUNK)
    assert reader.total_size == state.header_size + 16 + plain + 16 * chunks
    last = chunks - 1
    for index, final in [(0, False), (chunks // 2, False), (last, True)]:
        start = age.chunk_offset(index, state.header_size)
        sealed = reader.read(start, CHUNK + TAG)
        assert open_chunk(state.file_key, state.payload_nonce, index, sealed, final) == \
            bytes(min(CHUNK, plain - index * CHUNK))
    assert reader.read(reader.total_size - 1, 10) == reader.read(age.chunk_offset(
        last, state.header_size), CHUNK + TAG)[-1:]


def test_an_8_gib_sparse_member_tape_has_the_predicted_size(tmp_path, state):
    root, small = build_sparse_tree(tmp_path)
    tape = record(root)
    with EncryptedReader(TapeReader(tape), state) as reader:
        assert reader.total_size == age.encrypted_size(tape.total_size, state.header_size)
        assert tape.total_size > 8 << 30
        last = age.chunk_count(tape.total_size) - 1
        start = age.chunk_offset(last, state.header_size)
        sealed = reader.read(start, reader.total_size - start)
        with TapeReader(tape) as plain:
            expect = plain.read(last * CHUNK, tape.total_size - last * CHUNK)
    assert open_chunk(state.file_key, state.payload_nonce, last, sealed, True) == expect
    assert small in expect and expect.endswith(bytes(1024))  # the last member, then the footer


# -- the state: fresh once, identical after -------------------------------------------------


def test_two_states_for_the_same_recipients_share_nothing_random(keys):
    recipients = [parse_recipient(k.public) for k in keys]
    a, b = EncryptionState.create(recipients), EncryptionState.create(recipients)
    assert a.recipients == b.recipients
    assert a.file_key != b.file_key and a.payload_nonce != b.payload_nonce
    assert a.header != b.header and a.header_size == b.header_size


def test_the_same_state_gives_identical_bytes_also_through_the_meta_table(medium_tape, state):
    again = EncryptionState.from_meta(state.to_meta())
    assert again == state
    with EncryptedReader(TapeReader(medium_tape), state) as a, \
            EncryptedReader(TapeReader(medium_tape), again) as b:
        assert read_all(a, 3 * MiB) == read_all(b, 1_000_000)


def unwrap(stanza_share: bytes, body: bytes, secret: str) -> bytes:
    """The file key from an X25519 stanza, as the spec has an identity do it."""
    _, key = age.bech32_decode(secret)
    identity = X25519PrivateKey.from_private_bytes(key)
    recipient = identity.public_key().public_bytes_raw()
    shared = identity.exchange(X25519PublicKey.from_public_bytes(stanza_share))
    wrap = HKDF(hashes.SHA256(), 32, stanza_share + recipient, b"age-encryption.org/v1/X25519")
    return ChaCha20Poly1305(wrap.derive(shared)).decrypt(bytes(12), body, None)


def test_the_meta_holds_the_file_key_every_reader_derives_and_no_secret_key(keys, state):
    meta = state.to_meta()
    assert set(meta) == {"age_recipients", "age_file_key", "age_payload_nonce", "age_header"}
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["age_recipients"].split("\n") == [k.public for k in keys]
    stanzas, _, _ = age.parse_header(state.header)
    for key, stanza in zip(keys, stanzas):
        assert unwrap(age.unb64(stanza.args[1]), stanza.body, key.secret).hex() == meta["age_file_key"]
        assert not any(key.secret.lower() in v.lower() for v in meta.values())
    assert state.file_key.hex() not in repr(state)


def _damage(meta: dict, case: str, other: EncryptionState) -> dict:
    meta = dict(meta)
    if case == "missing_header":
        del meta["age_header"]
    elif case == "not_hex":
        meta["age_file_key"] = "zz" * 16
    elif case == "short_nonce":
        meta["age_payload_nonce"] = "00" * 15
    elif case == "not_text":
        meta["age_file_key"] = bytes(16)
    elif case == "other_file_key":
        meta["age_file_key"] = other.file_key.hex()
    elif case == "header_edited":
        meta["age_header"] = meta["age_header"].replace("X25519", "X25518", 1)
    elif case == "header_not_canonical":
        meta["age_header"] = meta["age_header"].replace("\n", "\r\n", 1)
    elif case == "recipient_dropped":
        meta["age_recipients"] = meta["age_recipients"].split("\n")[0]
    elif case == "recipient_garbled":
        meta["age_recipients"] = "age1garbage\n" + meta["age_recipients"].split("\n")[1]
    return meta


@pytest.mark.parametrize("case", ["missing_header", "not_hex", "short_nonce", "not_text",
                                  "other_file_key", "header_edited", "header_not_canonical",
                                  "recipient_dropped", "recipient_garbled"])
def test_a_damaged_state_in_the_meta_table_is_a_one_line_error(state, keys, case):
    other = EncryptionState.create([parse_recipient(k.public) for k in keys])
    with pytest.raises(IndexCorruptError) as info:
        EncryptionState.from_meta(_damage(state.to_meta(), case, other), where="idx.db")
    assert str(info.value).startswith("idx.db: damaged encryption state: ")
    assert "\n" not in str(info.value)


# -- errors ---------------------------------------------------------------------------------


def test_a_changed_source_fails_the_encrypted_read_as_it_fails_the_plain_one(tmp_path, state):
    root = build_small_tree(tmp_path)
    tape = record(root)
    (root / "sub" / "c.txt").write_bytes(content(b"sub/c.txt", 2001))
    with TapeReader(tape) as plain, pytest.raises(SourceChangedError) as plain_err:
        plain.read(0, tape.total_size)
    with EncryptedReader(TapeReader(tape), state) as reader:
        with pytest.raises(SourceChangedError) as enc_err:
            reader.read(0, reader.total_size)
        assert str(enc_err.value) == str(plain_err.value)
        assert enc_err.value.member == plain_err.value.member
        assert reader.read(0, state.header_size) == state.header  # the header needs no source


def test_a_byte_source_that_returns_too_little_is_an_error(state):
    class Short(MemoryReader):
        def read(self, offset, size):
            return super().read(offset, size)[:-1]

    reader = EncryptedReader(Short(bytes(1000)), state)
    with pytest.raises(ShortReadError, match="returned 999 of 1000 bytes at offset 0"):
        reader.read(0, reader.total_size)


def test_a_low_order_recipient_key_is_refused(keys):
    zero = parse_recipient(age.bech32_encode("age", bytes(32)))
    with pytest.raises(RecipientError, match="not a usable X25519 public key"):
        EncryptionState.create([parse_recipient(keys[0].public), zero])


def test_no_recipients_is_an_error():
    with pytest.raises(RecipientError, match="at least one recipient"):
        EncryptionState.create([])
    with pytest.raises(RecipientError, match="at least one recipient"):
        load_recipients([], [])


def test_recipients_from_strings_and_files_together(keys, tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(f"# both\n{keys[1].public}\n{keys[0].public}\n")
    got = load_recipients([keys[0].public], [str(path)])
    assert [str(r) for r in got] == [keys[0].public, keys[1].public]


@pytest.mark.parametrize("case", ["missing", "directory", "not_utf8", "too_big"])
def test_an_unreadable_recipients_file_is_a_one_line_error_naming_it(tmp_path, case):
    path = tmp_path / "r.txt"
    if case == "directory":
        path.mkdir()
    elif case == "not_utf8":
        path.write_bytes(b"\xff\xfe age1\n")
    elif case == "too_big":
        with open(path, "wb") as f:
            f.truncate(age.RECIPIENTS_FILE_LIMIT + 1)
    with pytest.raises(RecipientError) as info:
        read_recipients_file(str(path))
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_without_the_age_extra_encryption_is_a_one_line_error(monkeypatch, keys):
    # What a machine without cryptography sees: its import fails.
    monkeypatch.setattr(encrypt, "_crypto_cache", None)
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    recipients = [parse_recipient(keys[0].public)]  # parsing needs no crypto
    for attempt in (lambda: EncryptionState.create(recipients),
                    lambda: EncryptedReader(MemoryReader(b""), None), encrypt.require_crypto):
        with pytest.raises(AgeUnavailableError) as info:
            attempt()
        message = str(info.value)
        assert "pip install 'tartapefs[age]'" in message and "\n" not in message


def test_the_package_imports_without_the_age_extra():
    code = ("import sys; sys.modules['cryptography'] = None\n"
            "import tartapefs\n"
            "from tartapefs import EncryptedReader, EncryptionState, load_recipients\n"
            "print(len(load_recipients(['" + age.bech32_encode("age", bytes(range(32))) + "'])))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "1\n", proc.stderr
