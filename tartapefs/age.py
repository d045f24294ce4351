"""The age v1 file format (C2SP age), its framing only: pure functions, no I/O, no crypto.

An age file is a text header followed by a binary payload::

    age-encryption.org/v1\\n
    -> X25519 <ephemeral share, base64>\\n       one stanza per recipient: an argument line,
    <wrapped file key, base64, 64 columns>\\n     then a body wrapped at 64 columns that ends
                                                 with a line shorter than 64 (maybe empty)
    --- <HMAC-SHA-256 of everything up to "---", base64>\\n
    <16-byte payload nonce><chunk 0><chunk 1>...<final chunk>

The payload is the plaintext cut in 64 KiB chunks, each sealed with ChaCha20-Poly1305 (16 more
bytes each). The nonce of chunk ``i`` is ``i`` as 11 big-endian bytes, then 0x01 for the final
chunk, 0x00 before it. There is always at least one chunk; only an empty plaintext has an empty
(final) chunk, so a plaintext of exactly k * 64 KiB has k chunks, the last one full and flagged.
Base64 is the standard alphabet without ``=`` padding, and must be canonical.

So the encrypted size is a formula of the plaintext size (:func:`encrypted_size`), and any byte
range of the file needs only the chunks that cover it (:func:`chunks_covering`). The keys,
the X25519 wrapping and the sealing are in :mod:`tartapefs.encrypt`, which needs the optional
``cryptography`` package; this module needs only the standard library.

Recipients are age X25519 public keys, ``age1`` + Bech32 (BIP 173 checksum, no length limit)
of 32 bytes. Errors in what a user gives are :class:`RecipientError`: one line naming the input
(or the file and line) and the reason, never the content of a line that might be a secret.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from .errors import UsageError

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024       # plaintext bytes per payload chunk
TAG = 16                # Poly1305 tag after each chunk
NONCE = 16              # payload nonce at the start of the payload
FILE_KEY = 16           # file key: 128 bits
KEY_SIZE = 32           # an X25519 public key
MAC_SIZE = 32           # HMAC-SHA-256
COLUMNS = 64            # stanza body line width
X25519_STANZA = "X25519"

# Bounds on what a user hands us, so no input makes us loop or grow for long: the same limits
# as the age command's recipients files (16 MiB, 8 KiB lines).
RECIPIENTS_FILE_LIMIT = 16 << 20
LINE_LIMIT = 8 << 10


class RecipientError(UsageError):
    """A recipient (or recipients file) that cannot be used: malformed, of an unsupported
    type, or none at all. The message is one line naming the input and the reason."""


class AgeFormatError(ValueError):
    """Bytes that are not a well-formed age v1 header (see :func:`parse_header`)."""


# -- Bech32 (BIP 173, without its 90-character limit) -------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {c: i for i, c in enumerate(_CHARSET)}
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values) -> int:
    check = 1
    for v in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_GENERATORS):
            if top >> i & 1:
                check ^= g
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode_words(hrp: str, words: list[int]) -> str:
    """``hrp`` + ``1`` + the 5-bit ``words`` + a 6-character checksum, all lowercase."""
    hrp = hrp.lower()
    poly = _polymod(_hrp_expand(hrp) + list(words) + [0] * 6) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in list(words) + checksum)


def bech32_decode_words(text: str) -> tuple[str, list[int]]:
    """(lowercase HRP, 5-bit words) of a Bech32 string; ``ValueError`` saying why it is not one.

    All lowercase or all uppercase; the HRP is everything before the last ``1``, at least one
    character of ASCII 33..126; the checksum (6 characters) is over the lowercase form.
    """
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("a character outside printable ASCII")
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed upper and lower case")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 1:
        raise ValueError("no human-readable part before the separator '1'")
    if len(text) - sep - 1 < 6:
        raise ValueError("too short for its checksum")
    hrp, data = text[:sep], text[sep + 1:]
    bad = next((c for c in data if c not in _VALUES), None)
    if bad is not None:
        raise ValueError(f"{bad!r} is not a Bech32 character")
    words = [_VALUES[c] for c in data]
    if _polymod(_hrp_expand(hrp) + words) != 1:
        raise ValueError("bad checksum (a typo, or a truncated key?)")
    return hrp, words[:-6]


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 of ``data`` (bytes regrouped in 5 bits, zero-padded) under ``hrp``."""
    acc = bits = 0
    words = []
    for byte in data:
        acc, bits = acc << 8 | byte, bits + 8
        while bits >= 5:
            bits -= 5
            words.append(acc >> bits & 31)
    if bits:
        words.append(acc << (5 - bits) & 31)
    return bech32_encode_words(hrp, words)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(lowercase HRP, bytes) of a Bech32 string; ``ValueError`` if it is not one or if its
    5-bit groups do not make whole bytes (more than 4 padding bits, or padding that is not 0)."""
    hrp, words = bech32_decode_words(text)
    acc = bits = 0
    out = bytearray()
    for w in words:
        acc, bits = acc << 5 | w, bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise ValueError("its data is not a whole number of bytes")
    return hrp, bytes(out)


# -- recipients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """An age X25519 recipient: a 32-byte Curve25519 public key. ``str()`` gives ``age1…``."""

    public_key: bytes

    def __str__(self) -> str:
        return bech32_encode("age", self.public_key)

    def __repr__(self) -> str:
        return f"Recipient({str(self)!r})"


def _shown(text: str, limit: int = 24) -> str:
    """The start of a bad input for a message: enough to recognise it, never a whole long line."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _unsupported(text: str) -> str | None:
    """Why ``text`` is a recipient of a type we do not support, or None."""
    lower = text.lower()
    if lower.startswith(("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")):
        return "an SSH public key: only age X25519 recipients (age1…) are supported"
    if lower.startswith("age-secret-key-"):
        return "a secret key, not a recipient: give its public key (age-keygen -y KEYFILE)"
    if lower.startswith("age-plugin-"):
        return "a plugin identity, not a recipient"
    if lower.startswith("scrypt"):
        return "passphrase (scrypt) encryption is not supported: give an age1… recipient"
    if lower.startswith("age1") and lower.rfind("1") > 3:
        kind = lower[3:lower.rfind("1")]
        if kind == "1pq":
            return "a post-quantum (ML-KEM) recipient: only age X25519 recipients are supported"
        if kind in ("1tag", "1tagpq"):
            return "a hardware-key (tagged) recipient: only age X25519 recipients are supported"
        return f"a plugin recipient (age-plugin-{kind[1:]}): only age X25519 recipients are supported"
    return None


def parse_recipient(text: str, where: str | None = None) -> Recipient:
    """The X25519 recipient ``age1…`` (either case) in ``text``.

    ``where`` names the input in errors instead of the text itself (a file and line, whose
    content is not echoed). Raises :class:`RecipientError` for anything else: a malformed
    string, a bad checksum, or a recipient of another type (SSH keys, post-quantum, tagged and
    plugin recipients, a passphrase, a secret key).
    """
    name = where or repr(_shown(text))
    why = _unsupported(text)
    if why:
        raise RecipientError(f"{name}: unsupported recipient: {why}")
    try:
        hrp, key = bech32_decode(text)
    except ValueError as err:
        raise RecipientError(f"{name}: not an age recipient: {err}") from None
    if hrp != "age":
        raise RecipientError(f"{name}: not an age recipient (it should start with age1)")
    if len(key) != KEY_SIZE:
        raise RecipientError(f"{name}: not an age recipient: holds {len(key)} bytes, "
                             f"an X25519 key has {KEY_SIZE}")
    return Recipient(key)


def parse_recipients(text: str, name: str) -> list[Recipient]:
    """The recipients of a recipients file's text, as ``age -R`` reads it: one per line, lines
    starting with ``#`` and empty lines skipped. ``name`` is the file's name for messages.

    Raises :class:`RecipientError` naming the file and line for a bad line (its content is not
    repeated: the file might hold secrets), and for a file with no recipient at all.
    """
    found: list[Recipient] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        if len(line) > LINE_LIMIT:
            raise RecipientError(f"{name}: line {number} is too long ({len(line)} characters)")
        found.append(parse_recipient(line, where=f"{name}: line {number}"))
    if not found:
        raise RecipientError(f"{name}: no recipients in the file")
    return unique(found)


def unique(recipients) -> list[Recipient]:
    """``recipients`` in order without repeats (one stanza each is enough)."""
    return list(dict.fromkeys(recipients))


# -- header -------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    """Standard base64 without ``=`` padding, as age writes it."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    """Inverse of :func:`b64`; ``AgeFormatError`` for padding or a non-canonical encoding."""
    if "=" in text or any(c not in _B64 for c in text) or len(text) % 4 == 1:
        raise AgeFormatError(f"not unpadded base64: {_shown(text)!r}")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise AgeFormatError(f"not unpadded base64: {_shown(text)!r}") from None
    if b64(data) != text:
        raise AgeFormatError(f"not canonical base64: {_shown(text)!r}")
    return data


_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its arguments (the first names the type) and its body bytes."""

    args: tuple[str, ...]
    body: bytes


def encode_stanza(stanza: Stanza) -> bytes:
    """``-> ARGS\\n`` then the body in base64 lines of 64 columns, the last one shorter (maybe
    empty)."""
    text = b64(stanza.body)
    lines = [text[i:i + COLUMNS] for i in range(0, len(text), COLUMNS)]
    if not lines or len(lines[-1]) == COLUMNS:
        lines.append("")
    return ("-> " + " ".join(stanza.args) + "\n" + "".join(ln + "\n" for ln in lines)).encode("ascii")


def mac_input(stanzas) -> bytes:
    """What the header MAC covers: the version line, the stanzas and the ``---`` mark."""
    if not stanzas:
        raise ValueError("an age header needs at least one stanza")
    return VERSION_LINE + b"".join(encode_stanza(s) for s in stanzas) + b"---"


def encode_header(stanzas, mac: bytes) -> bytes:
    """The whole header: :func:`mac_input`, a space, the base64 MAC and a line feed."""
    if len(mac) != MAC_SIZE:
        raise ValueError(f"a header MAC has {MAC_SIZE} bytes, not {len(mac)}")
    return mac_input(stanzas) + b" " + b64(mac).encode("ascii") + b"\n"


def header_size(stanzas) -> int:
    """``len(encode_header(stanzas, mac))`` for any MAC, in bytes."""
    return len(mac_input(stanzas)) + 1 + 43 + 1


def parse_header(data: bytes) -> tuple[list[Stanza], bytes, int]:
    """(stanzas, MAC, header length in bytes) of the v1 header at the start of ``data``.

    Strict: only what :func:`encode_header` writes is accepted (LF line ends, canonical base64,
    every argument non-empty printable ASCII). Raises :class:`AgeFormatError` saying what is
    wrong. Reads each line once: the work is linear in the header's size.
    """
    pos = 0

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise AgeFormatError("the header ends without a line feed")
        text, pos = data[pos:end], end + 1
        return text

    if line() + b"\n" != VERSION_LINE:
        raise AgeFormatError("not an age v1 file (no age-encryption.org/v1 line)")
    stanzas: list[Stanza] = []
    while True:
        text = line()
        if text.startswith(b"--- ") or text == b"---":
            break
        if not text.startswith(b"-> "):
            raise AgeFormatError(f"header line {text[:20]!r}: neither a stanza nor the MAC")
        args = text[3:].split(b" ")
        if any(not a or any(not 33 <= c <= 126 for c in a) for a in args):
            raise AgeFormatError("a stanza argument is empty or not printable ASCII")
        body = ""
        while True:
            chunk = line().decode("ascii", "replace")
            if len(chunk) > COLUMNS:
                raise AgeFormatError("a stanza body line is longer than 64 columns")
            body += chunk
            if len(chunk) < COLUMNS:
                break
        stanzas.append(Stanza(tuple(a.decode("ascii") for a in args), unb64(body)))
    if not stanzas:
        raise AgeFormatError("the header has no recipient stanza")
    if not text.startswith(b"--- "):
        raise AgeFormatError("the MAC line has no MAC")
    mac = unb64(text[4:].decode("ascii", "replace"))
    if len(mac) != MAC_SIZE:
        raise AgeFormatError(f"the header MAC has {len(mac)} bytes, not {MAC_SIZE}")
    return stanzas, mac, pos


# -- payload: sizes and offsets -----------------------------------------------------------------


def chunk_count(plaintext_size: int) -> int:
    """Chunks of a payload of ``plaintext_size`` bytes: at least one (an empty plaintext is one
    empty final chunk); a final chunk may be full, and is then not followed by an empty one."""
    if plaintext_size < 0:
        raise ValueError(f"negative plaintext size {plaintext_size}")
    return max(1, -(-plaintext_size // CHUNK))


def payload_size(plaintext_size: int) -> int:
    """Bytes of the payload: the nonce, the plaintext and one tag per chunk."""
    return NONCE + plaintext_size + TAG * chunk_count(plaintext_size)


def encrypted_size(plaintext_size: int, header_size: int) -> int:
    """Exact size in bytes of the age file of ``plaintext_size`` bytes under a header of
    ``header_size`` bytes: header + 16-byte nonce + plaintext + 16 bytes per 64 KiB chunk."""
    return header_size + payload_size(plaintext_size)


def chunk_nonce(index: int, last: bool) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce of chunk ``index``: the counter as 11 big-endian
    bytes, then the final-chunk flag."""
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def chunk_plaintext(index: int, plaintext_size: int) -> tuple[int, int]:
    """[start, end) of chunk ``index``'s plaintext, in plaintext bytes."""
    start = index * CHUNK
    return start, min(start + CHUNK, plaintext_size)


def chunk_offset(index: int, header_size: int) -> int:
    """Offset in the age file of chunk ``index``'s first sealed byte (every chunk before it is
    full: CHUNK + TAG bytes)."""
    return header_size + NONCE + index * (CHUNK + TAG)


def chunks_covering(offset: int, size: int, plaintext_size: int, header_size: int) -> range:
    """The chunks any byte of the file range [offset, offset + size) falls in (an empty range
    when it holds only header and nonce bytes, or nothing)."""
    first_payload = header_size + NONCE
    end = min(offset + size, encrypted_size(plaintext_size, header_size))
    if end <= max(offset, first_payload):
        return range(0)
    sealed = CHUNK + TAG
    first = (max(offset, first_payload) - first_payload) // sealed
    last = (end - 1 - first_payload) // sealed
    return range(first, min(last, chunk_count(plaintext_size) - 1) + 1)
