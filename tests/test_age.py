"""The age framing (tartapefs/age.py): Bech32, recipients, the header, the size and chunk math.

Checked against independent sources: the BIP 173 Bech32 vectors, keys made by the real
age-keygen, recipients files read by the real age, the C2SP age test vectors (headers
re-encoded byte for byte, payloads re-encrypted byte for byte) and the real age's output sizes.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agekit import MemoryReader, age_decrypt, keygen, open_chunk, sha256, vector, vectors
from tartapefs import age
from tartapefs.age import (CHUNK, TAG, AgeFormatError, Recipient, RecipientError, Stanza,
                           bech32_decode, bech32_decode_words, bech32_encode,
                           bech32_encode_words, chunks_covering, encode_header, encrypted_size,
                           header_size, parse_header, parse_recipient, parse_recipients)
from tartapefs.encrypt import EncryptedReader, EncryptionState, header_mac

pytestmark = pytest.mark.index

# -- Bech32 ---------------------------------------------------------------------------------

BIP173_VALID = [
    "A12UEL5L", "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w", "?1ezyfcl",
]
# BIP 173's invalid strings, but for its 90-character limit, which age does not have.
BIP173_INVALID = [
    "\x201nwldj5", "\x7f1axkwrx", "\x801eym55h", "pzry9x0s0muk", "1pzry9x0s0muk", "x1b4n0q5v",
    "li1dgmt3", "de1lg7wt\xff", "A1G7SGD8", "10a06t8", "1qzzfhee",
]


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bech32_accepts_every_bip173_valid_string_and_reencodes_it(text):
    hrp, words = bech32_decode_words(text)
    assert bech32_encode_words(hrp, words) == text.lower()


@pytest.mark.parametrize("text", BIP173_INVALID)
def test_bech32_refuses_every_bip173_invalid_string(text):
    with pytest.raises(ValueError):
        bech32_decode_words(text)


def test_bech32_refuses_mixed_case_and_a_changed_character():
    good = "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"
    with pytest.raises(ValueError, match="mixed"):
        bech32_decode_words("Abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw")
    for i in range(7, len(good)):
        typo = good[:i] + ("q" if good[i] != "q" else "p") + good[i + 1:]
        with pytest.raises(ValueError, match="checksum"):
            bech32_decode_words(typo)


@pytest.mark.parametrize("words", [[0, 1], [0], [31] * 7])
def test_bech32_bytes_refuse_padding_that_is_not_zero_or_too_long(words):
    # [0, 1]: 10 bits, one byte and 2 padding bits that are not zero; [0]: 5 bits, no byte
    # and 5 bits of padding; [31] * 7: 35 bits, 4 bytes and 3 padding bits of ones.
    with pytest.raises(ValueError, match="whole number of bytes"):
        bech32_decode(bech32_encode_words("a", words))


@settings(max_examples=200, deadline=None)
@given(hrp=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
       .map(str.lower), data=st.binary(max_size=80))
def test_bech32_round_trips_any_bytes(hrp, data):
    assert bech32_decode(bech32_encode(hrp, data)) == (hrp, data)


# -- recipients -----------------------------------------------------------------------------

SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def public_of(secret: str) -> str:
    hrp, key = bech32_decode(secret)
    assert hrp == "age-secret-key-"
    return str(Recipient(X25519PrivateKey.from_private_bytes(key).public_key().public_bytes_raw()))


def test_the_spec_example_identity_gives_the_spec_example_recipient():
    assert public_of(SPEC_IDENTITY) == SPEC_RECIPIENT
    assert str(parse_recipient(SPEC_RECIPIENT)) == SPEC_RECIPIENT


def test_keys_made_by_age_keygen_decode_to_their_public_keys(tmp_path):
    for i in range(5):
        key = keygen(tmp_path, f"k{i}.txt")
        r = parse_recipient(key.public)
        assert str(r) == key.public and len(r.public_key) == 32
        assert public_of(key.secret) == key.public
        assert parse_recipient(key.public.upper()) == r


def _bech32_age(data: bytes) -> str:
    return bech32_encode("age", data)


BAD_RECIPIENTS = {
    "empty": ("", "not an age recipient"),
    "garbage": ("hello world", "not an age recipient"),
    "truncated": (SPEC_RECIPIENT[:-3], "checksum"),
    "typo": (SPEC_RECIPIENT[:10] + "q" + SPEC_RECIPIENT[11:], "checksum"),
    "mixed_case": (SPEC_RECIPIENT[:5] + SPEC_RECIPIENT[5:].upper(), "mixed"),
    "other_hrp": (bech32_encode("bc", bytes(32)), "should start with age1"),
    "short_key": (_bech32_age(bytes(31)), "31 bytes"),
    "long_key": (_bech32_age(bytes(33)), "33 bytes"),
    "ssh_ed25519": ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN",
                    "SSH public key"),
    "ssh_rsa": ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "SSH public key"),
    "post_quantum": ("age1pq1" + "q" * 60, "post-quantum"),
    "tagged": ("age1tag1qt8lw0ual6avlwmwatk888yqnmdamm7xfd0wak53ut6elz5c4swx2yqdj4e", "hardware-key"),
    "plugin": ("age1yubikey1q2w7u4gvgwxn0yj", "plugin recipient (age-plugin-yubikey)"),
    "scrypt": ("scrypt", "passphrase"),
    "secret_key": (SPEC_IDENTITY, "a secret key, not a recipient"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPIENTS))
def test_a_bad_recipient_is_a_one_line_error_naming_it(case):
    text, reason = BAD_RECIPIENTS[case]
    with pytest.raises(RecipientError) as info:
        parse_recipient(text)
    message = str(info.value)
    assert "\n" not in message and reason in message
    assert repr(text.strip()[:12])[:-1] in message  # the input is named (its start)
    assert SPEC_IDENTITY not in message  # a secret given by mistake is never printed whole


def test_a_recipients_file_reads_as_age_R_reads_it(tmp_path):
    keys = [keygen(tmp_path, f"k{i}.txt") for i in range(3)]
    text = (f"# team keys\n\n{keys[0].public}\n#{keys[1].public} (commented out)\n"
            f"{keys[1].public}\r\n\n{keys[2].public}\n{keys[0].public}\n")
    path = tmp_path / "recipients.txt"
    path.write_text(text)
    ours = parse_recipients(text, str(path))
    assert [str(r) for r in ours] == [k.public for k in keys]  # in order, the repeat dropped
    # The real age takes the same file, and each of the three keys opens what it wrote.
    sealed = subprocess.run(["age", "-R", str(path)], input=b"secret", capture_output=True,
                            check=True).stdout
    for key in keys:
        assert age_decrypt(sealed, key).stdout == b"secret"


BAD_FILES = {
    "empty": ("", "no recipients in the file"),
    "only_comments": ("# nobody\n\n# yet\n", "no recipients in the file"),
    "bad_line": (f"# ok\n{SPEC_RECIPIENT}\nage1notakey\n", "line 3: not an age recipient"),
    "ssh_line": ("ssh-ed25519 AAAAC3Nza alice@host\n", "line 1: unsupported recipient: an SSH"),
    "secret_line": (f"{SPEC_IDENTITY}\n", "line 1: unsupported recipient: a secret key"),
    "long_line": ("age1" + "q" * 9000 + "\n", "line 1 is too long"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_recipients_file_is_a_one_line_error_naming_file_and_line(case):
    text, reason = BAD_FILES[case]
    with pytest.raises(RecipientError) as info:
        parse_recipients(text, "keys.txt")
    message = str(info.value)
    assert message.startswith("keys.txt: ") and reason in message and "\n" not in message
    assert "notakey" not in message and "alice" not in message  # a line's content is not echoed
    assert "GFPYYSJZ" not in message


# -- header ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body_size", [0, 1, 32, 47, 48, 49, 95, 96, 97, 200])
def test_a_stanza_body_wraps_at_64_columns_and_ends_with_a_short_line(body_size):
    stanza = Stanza(("X25519", "abc"), os.urandom(body_size))
    lines = age.encode_stanza(stanza).split(b"\n")[1:-1]
    assert all(len(ln) == 64 for ln in lines[:-1]) and len(lines[-1]) < 64
    header = encode_header([stanza], bytes(32))
    assert len(header) == header_size([stanza])
    assert parse_header(header + b"payload") == ([stanza], bytes(32), len(header))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8),
             min_size=1, max_size=3),
    st.binary(max_size=150)), min_size=1, max_size=4), st.binary(min_size=32, max_size=32))
def test_any_header_round_trips_and_has_its_predicted_size(raw, mac):
    stanzas = [Stanza(tuple(args), body) for args, body in raw]
    header = encode_header(stanzas, mac)
    assert len(header) == header_size(stanzas)
    assert parse_header(header) == (stanzas, mac, len(header))


def _header(v) -> bytes:
    return v.file[:v.header_end()]


HEADER_OK = vectors("success") + vectors("HMAC failure") + vectors("payload failure")


@pytest.mark.parametrize("name", HEADER_OK)
def test_testkit_headers_reencode_byte_for_byte(name):
    v = vector(name)
    stanzas, mac, size = parse_header(v.file)
    assert size == v.header_end()
    assert encode_header(stanzas, mac) == _header(v)


@pytest.mark.parametrize("name", vectors("header failure"))
def test_testkit_malformed_headers_are_refused(name):
    with pytest.raises(AgeFormatError):
        stanzas, mac, size = parse_header(vector(name).file)
        # The few that parse are refused on re-encoding (what a strict reader checks).
        if encode_header(stanzas, mac) != vector(name).file[:size]:
            raise AgeFormatError("not canonical")


@pytest.mark.parametrize("name", HEADER_OK)
def test_testkit_header_macs_are_ours(name):
    v = vector(name)
    stanzas, mac, _ = parse_header(v.file)
    assert (header_mac(v.file_key, stanzas) == mac) == (v.expect != "HMAC failure")


# -- payload --------------------------------------------------------------------------------


def _state_of(v) -> EncryptionState:
    """The vector's own file key, nonce and header, as an encryption state."""
    return EncryptionState((), v.file_key, v.nonce(), _header(v))


def _plaintext_of(v) -> bytes:
    """The vector's plaintext, chunk by chunk, whatever flag each chunk was sealed with."""
    out = []
    for i, sealed in enumerate(v.chunks()):
        for last in (False, True):
            try:
                out.append(open_chunk(v.file_key, v.nonce(), i, sealed, last))
                break
            except Exception:
                continue
    return b"".join(out)


@pytest.mark.parametrize("name", [n for n in vectors("success") if n.startswith("stream_")
                                  or n in ("x25519", "x25519_multiple_recipients")])
def test_testkit_payloads_reencrypt_byte_for_byte(name):
    v = vector(name)
    plaintext = _plaintext_of(v)
    assert sha256(plaintext) == v.payload_sha256
    reader = EncryptedReader(MemoryReader(plaintext), _state_of(v))
    assert reader.total_size == len(v.file) == encrypted_size(len(plaintext), v.header_end())
    assert reader.read(0, reader.total_size) == v.file


@pytest.mark.parametrize("name", ["stream_last_chunk_empty", "stream_two_final_chunks_full",
                                  "stream_no_final_full"])
def test_testkit_framing_failures_are_never_what_we_write(name, tmp_path):
    # Each of these seals a plaintext of whole chunks wrongly (an empty final chunk after full
    # ones, two final chunks, no final chunk). Ours of the same plaintext, under the vector's
    # own header, differs, and the real age opens ours but refuses theirs.
    v = vector(name)
    plaintext = _plaintext_of(v)
    assert len(plaintext) % CHUNK == 0 and plaintext
    ours = EncryptedReader(MemoryReader(plaintext), _state_of(v))
    data = ours.read(0, ours.total_size)
    assert data != v.file
    identity = tmp_path / "identity.txt"
    identity.write_text(v.identity + "\n")
    opened = subprocess.run(["age", "-d", "-i", str(identity)], input=data, capture_output=True)
    assert opened.returncode == 0 and opened.stdout == plaintext
    refused = subprocess.run(["age", "-d", "-i", str(identity)], input=v.file, capture_output=True)
    assert refused.returncode != 0


# -- sizes and chunk math -------------------------------------------------------------------

GiB = 1 << 30


@pytest.mark.parametrize("plain,chunks", [(0, 1), (1, 1), (65535, 1), (65536, 1), (65537, 2),
                                          (3 * 65536, 3), (5 * GiB + 7, 5 * 16384 + 1)])
def test_the_size_formula(plain, chunks):
    assert age.chunk_count(plain) == chunks
    assert encrypted_size(plain, 100) == 100 + 16 + plain + 16 * chunks


@pytest.mark.parametrize("plain", [0, 1, 65535, 65536, 65537])
def test_the_size_formula_matches_the_real_age_output(plain, tmp_path):
    # One X25519 recipient: age's header has the same length as ours (43-character share and body).
    key = keygen(tmp_path)
    state = EncryptionState.create([parse_recipient(key.public)])
    theirs = subprocess.run(["age", "-r", key.public], input=bytes(plain), capture_output=True,
                            check=True).stdout
    assert len(theirs) == state.encrypted_size(plain) == encrypted_size(plain, state.header_size)


@settings(max_examples=300, deadline=None)
@given(plain=st.integers(0, 5 * CHUNK + 3), header=st.integers(1, 300), data=st.data())
def test_chunks_covering_is_exactly_the_chunks_a_range_touches(plain, header, data):
    total = encrypted_size(plain, header)
    offset = data.draw(st.integers(0, total + 5))
    size = data.draw(st.integers(0, total + 5))
    end = min(offset + size, total)
    touched = set()
    for i in range(age.chunk_count(plain)):
        start = age.chunk_offset(i, header)
        a, b = age.chunk_plaintext(i, plain)
        if max(offset, start) < min(end, start + (b - a) + TAG):  # [offset, end) meets the chunk
            touched.add(i)
    assert set(chunks_covering(offset, size, plain, header)) == touched
