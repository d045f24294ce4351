"""Encrypted archives: any byte source served as an age v1 file, with exact size and random access.

Theory of operation:

* Each tape (whole archive or shard) of a recording served encrypted gets its own
  :class:`EncryptionState`, created once at record time with fresh randomness: a 16-byte file
  key, a 16-byte payload nonce, and the header that wraps the file key for each recipient
  (X25519, an ephemeral key per stanza, then forgotten). Two tapes never share one: the same
  key and nonce over two different plaintexts would give both away. The state is kept in the
  recording's index as plain strings (:meth:`EncryptionState.to_meta`), so every later read,
  resume and remount gives the same bytes. It never holds a secret key of a user:
  only the file key, which is exactly what every reader of the archive can derive.
* :class:`EncryptedReader` wraps anything with ``read(offset, size)`` and ``total_size`` (a
  :class:`~tartapefs.TapeReader`, an in-memory tape, a slice of one). A read computes only the
  chunks its range touches: one plaintext read for them all from the wrapped reader, then one
  ChaCha20-Poly1305 seal per 64 KiB chunk. Chunks a read used only in part are kept (at most
  ``cache_chunks``, 8 by default: about 512 KiB), since the next sequential read starts in
  the same chunk; nothing else is kept.
* Errors of the wrapped reader pass through unchanged: a changed source file fails the
  encrypted read exactly as it fails the plain one.
* :func:`recorded_states` checks the states of a recording when it is opened;
  :class:`EncryptedTape` is a tape served as its age file, ``NAME.age``, which the mount and
  ``tartape stream`` serve instead of the tape.

Crypto comes from the ``cryptography`` package (the ``[age]`` extra), imported when first
needed: without it, creating a state or a reader raises :class:`AgeUnavailableError`. The
framing (header, chunk math, recipients) is :mod:`tartapefs.age`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING

from . import age
from .age import CHUNK, FILE_KEY, NONCE, TAG, Recipient, RecipientError, Stanza
from .errors import IndexCorruptError, TartapeError, UsageError

if TYPE_CHECKING:
    from .tape import Tape

META_PREFIX = "age_"  # every key :meth:`EncryptionState.to_meta` writes starts with this
_X25519_INFO = b"age-encryption.org/v1/X25519"
_SEALED = CHUNK + TAG


class AgeUnavailableError(UsageError):
    """Encryption was asked for, but the ``cryptography`` package (the ``[age]`` extra) is
    not installed."""


class ShortReadError(UsageError):
    """The wrapped byte source returned fewer bytes than asked for inside its size."""


_crypto_cache: SimpleNamespace | None = None


def require_crypto() -> SimpleNamespace:
    """The ``cryptography`` classes this module uses; :class:`AgeUnavailableError` (one line,
    with the install command) when the package is missing. Adapters call it up front so a
    missing extra is reported before any work."""
    global _crypto_cache
    if _crypto_cache is None:
        try:
            from cryptography.hazmat.primitives import hashes, hmac
            from cryptography.hazmat.primitives.asymmetric.x25519 import (X25519PrivateKey,
                                                                          X25519PublicKey)
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as err:
            raise AgeUnavailableError(
                "encryption needs the cryptography package: pip install 'tartapefs[age]' "
                f"({err})") from None
        _crypto_cache = SimpleNamespace(
            hashes=hashes, hmac=hmac, X25519PrivateKey=X25519PrivateKey,
            X25519PublicKey=X25519PublicKey, ChaCha20Poly1305=ChaCha20Poly1305, HKDF=HKDF)
    return _crypto_cache


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    c = require_crypto()
    return c.HKDF(algorithm=c.hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def header_mac(file_key: bytes, stanzas) -> bytes:
    """HMAC-SHA-256 of the header up to ``---``, keyed with HKDF(file key, info "header")."""
    c = require_crypto()
    mac = c.hmac.HMAC(_hkdf(file_key, None, b"header"), c.hashes.SHA256())
    mac.update(age.mac_input(stanzas))
    return mac.finalize()


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    """The 32-byte ChaCha20-Poly1305 key of the payload: HKDF(file key, salt nonce, "payload")."""
    return _hkdf(file_key, nonce, b"payload")


def x25519_stanza(file_key: bytes, recipient: Recipient) -> Stanza:
    """The file key wrapped for ``recipient`` under a fresh ephemeral X25519 key (never kept)."""
    c = require_crypto()
    ephemeral = c.X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(c.X25519PublicKey.from_public_bytes(recipient.public_key))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise RecipientError(f"{recipient}: not a usable X25519 public key") from None
    wrap_key = _hkdf(shared, share + recipient.public_key, _X25519_INFO)
    body = c.ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
    return Stanza((age.X25519_STANZA, age.b64(share)), body)


@dataclass(frozen=True)
class EncryptionState:
    """What decides an encrypted archive's bytes, beyond its plaintext: made once per tape.

    ``header`` is the whole age header (its stanzas wrap ``file_key`` for each recipient, its
    MAC is keyed from it); ``payload_nonce`` starts the payload. The same state gives the same
    bytes on every read. ``file_key`` is left out of ``repr`` so it does not reach a log.
    """

    recipients: tuple[Recipient, ...]
    file_key: bytes = field(repr=False)
    payload_nonce: bytes
    header: bytes

    @classmethod
    def create(cls, recipients) -> EncryptionState:
        """A new state for ``recipients`` (a non-empty list of :class:`Recipient`): fresh file
        key, nonce and ephemeral keys from ``os.urandom``. Raises :class:`RecipientError` for no
        recipients, :class:`AgeUnavailableError` without the ``[age]`` extra."""
        recipients = tuple(age.unique(recipients))
        if not recipients:
            raise RecipientError("encryption needs at least one recipient")
        require_crypto()
        file_key, nonce = os.urandom(FILE_KEY), os.urandom(NONCE)
        stanzas = [x25519_stanza(file_key, r) for r in recipients]
        header = age.encode_header(stanzas, header_mac(file_key, stanzas))
        return cls(recipients, file_key, nonce, header)

    @property
    def header_size(self) -> int:
        return len(self.header)

    def encrypted_size(self, plaintext_size: int) -> int:
        """Exact size in bytes of the age file of ``plaintext_size`` bytes under this state."""
        return age.encrypted_size(plaintext_size, len(self.header))

    def to_meta(self) -> dict[str, str]:
        """Plain strings for the recording's meta table (keys start with ``age_``)."""
        return {
            "age_recipients": "\n".join(str(r) for r in self.recipients),
            "age_file_key": self.file_key.hex(),
            "age_payload_nonce": self.payload_nonce.hex(),
            "age_header": self.header.decode("ascii"),
        }

    @classmethod
    def from_meta(cls, meta: dict, where: str = "index") -> EncryptionState:
        """The state :meth:`to_meta` wrote, checked: key and nonce sizes, a strict v1 header of
        one X25519 stanza per recipient, and its MAC under the file key. Anything else raises
        :class:`IndexCorruptError` naming ``where`` (a damaged state must never yield bytes
        no reader can decrypt)."""
        def bad(why: str) -> IndexCorruptError:
            return IndexCorruptError(f"{where}: damaged encryption state: {why}")

        try:
            values = {k: meta[META_PREFIX + k] for k in
                      ("recipients", "file_key", "payload_nonce", "header")}
        except KeyError as err:
            raise bad(f"no {err.args[0]}") from None
        if not all(isinstance(v, str) for v in values.values()):
            raise bad("a value is not text")
        try:
            file_key = bytes.fromhex(values["file_key"])
            nonce = bytes.fromhex(values["payload_nonce"])
            header = values["header"].encode("ascii")
        except (ValueError, UnicodeEncodeError):
            raise bad("not hex or ASCII") from None
        if len(file_key) != FILE_KEY or len(nonce) != NONCE:
            raise bad("file key or nonce of the wrong size")
        try:
            recipients = tuple(age.parse_recipient(r) for r in values["recipients"].split("\n"))
            stanzas, mac, size = age.parse_header(header)
        except (RecipientError, age.AgeFormatError) as err:
            raise bad(str(err)) from None
        if size != len(header) or age.encode_header(stanzas, mac) != header:
            raise bad("the header is not in canonical form")
        if len(stanzas) != len(recipients) or any(
                s.args[0] != age.X25519_STANZA or len(s.args) != 2 or len(s.body) != 32
                for s in stanzas):
            raise bad("the header does not hold one X25519 stanza per recipient")
        if header_mac(file_key, stanzas) != mac:
            raise bad("the header MAC does not match the file key")
        return cls(recipients, file_key, nonce, header)


def recorded_states(rows: dict[int, dict], recipients_text: str | None, tape_count: int,
                    where: str) -> tuple[tuple[Recipient, ...] | None, list[EncryptionState | None]]:
    """A recording's recipients and each tape's state, from its index: ``rows`` (tape number ->
    its state as :meth:`EncryptionState.to_meta` wrote it) and ``recipients_text`` (the
    recording's recipients, one per line; None when it is served in plain).

    Checked, since a state is what keeps a key from encrypting two plaintexts: one state per
    tape of exactly the recording's recipients, each valid (:meth:`EncryptionState.from_meta`),
    no two sharing a file key or a payload nonce. Anything else raises
    :class:`IndexCorruptError` naming ``where``; a plain recording with states is damaged too.
    """
    if recipients_text is None:
        if rows:
            raise IndexCorruptError(f"{where}: damaged encryption state: states of a recording not encrypted")
        return None, [None] * tape_count
    if not isinstance(recipients_text, str) or sorted(rows) != list(range(tape_count)):
        raise IndexCorruptError(f"{where}: damaged encryption state: not one state per archive")
    states = [EncryptionState.from_meta(rows[n], f"{where}: archive {n}") for n in range(tape_count)]
    if any(rows[n][META_PREFIX + "recipients"] != recipients_text for n in range(tape_count)):
        raise IndexCorruptError(f"{where}: damaged encryption state: an archive to other recipients")
    if len({s.file_key for s in states}) != tape_count or len({s.payload_nonce for s in states}) != tape_count:
        raise IndexCorruptError(f"{where}: damaged encryption state: two archives share a file key or nonce")
    return states[0].recipients, states


def _sealing_thread():
    """``tartapefs._seal`` (csrc/seal.c: chunks sealed on a C thread that never takes the
    GIL), or None: on the pure-Python path, without the extension, or without libcrypto."""
    global _seal_module
    if _seal_module is False:
        from . import native
        _seal_module = None
        if native.module is not None:
            try:
                from . import _seal
            except ImportError:
                pass
            else:
                _seal_module = _seal
    return _seal_module


_seal_module = False  # not looked for yet
_THREAD_MIN = 4  # chunks a read seals from which they are sealed on the sealing thread


class EncryptedReader:
    """Random access to the age encryption of a byte source. Not thread-safe: one per thread.

    ``plain`` is any object with ``read(offset, size) -> bytes`` (exactly those bytes, or an
    error) and ``total_size``; ``state`` an :class:`EncryptionState`. ``total_size`` is the
    encrypted size. ``close()`` closes ``plain`` too, if it has a ``close``.
    """

    def __init__(self, plain, state: EncryptionState, cache_chunks: int = 8) -> None:
        c = require_crypto()
        self.plain = plain
        self.state = state
        self.plaintext_size: int = plain.total_size
        self.total_size: int = state.encrypted_size(self.plaintext_size)
        self._header_size = len(state.header)
        self._prefix = state.header + state.payload_nonce  # the bytes before chunk 0
        self._chunks = age.chunk_count(self.plaintext_size)
        self._key = payload_key(state.file_key, state.payload_nonce)
        aead = c.ChaCha20Poly1305(self._key)
        self._encrypt = aead.encrypt
        # Sealing straight into the output buffer saves a copy a chunk (cryptography >= 45).
        self._encrypt_into = getattr(aead, "encrypt_into", None)
        self._cache: OrderedDict[int, bytes | bytearray] = OrderedDict()  # never handed out
        self._cache_chunks = max(0, cache_chunks)

    def read(self, offset: int, size: int) -> bytearray | bytes:
        """Exactly ``min(size, total_size - offset)`` bytes of the age file from ``offset``
        (b"" at or past the end), in a new ``bytearray`` the caller owns: the chunks are
        sealed straight into it, and copying it into ``bytes`` would add about 15% to the
        sealing (a FUSE reply and ``write`` take it as it is). Raises what the wrapped reader
        raises, :class:`UsageError` for a negative offset or size, :class:`ShortReadError` if
        the wrapped reader returns fewer bytes than it holds."""
        return self.begin_read(offset, size, threaded=False).result()

    def begin_read(self, offset: int, size: int, *, threaded: bool = True) -> PendingRead:
        """:meth:`read` in two steps, so that a server can answer other requests while the
        chunks are sealed: the plaintext is read here (its errors are raised here), and the
        sealing is queued on the sealing thread (``tartapefs._seal``) when there is one and
        ``threaded``; else it is done here. Wait until ``fileno()`` of the result is readable
        (None: nothing to wait for), then its ``result()`` is what :meth:`read` returns.
        Reads begun together may finish in any order."""
        if offset < 0 or size < 0:
            raise UsageError(f"read: negative offset or size ({offset}, {size})")
        end = min(offset + size, self.total_size)
        if offset >= end:
            return PendingRead(self, bytearray(), offset, {}, (), None)
        out = bytearray(end - offset)
        prefix = self._prefix
        if offset < len(prefix):
            out[:len(prefix) - offset] = prefix[offset:end]
        chunks = age.chunks_covering(offset, end - offset, self.plaintext_size, self._header_size)
        if not chunks:
            return PendingRead(self, out, offset, {}, (), None)
        first, last = chunks.start, chunks.stop - 1
        # A chunk the range covers whole is sealed straight into ``out``; one it covers in part
        # (only the first or the last can be) comes whole from the cache, or is sealed aside,
        # kept and copied in part: the next read in order starts in it.
        partial: dict[int, bytes | bytearray | None] = {}
        for index in {first, last}:
            start = age.chunk_offset(index, self._header_size)
            if start < offset or start + self._sealed_size(index) > end:
                partial[index] = self._cache.get(index)
                if partial[index] is not None:
                    self._cache.move_to_end(index)
        seal_first = first + (partial.get(first) is not None)
        seal_last = last - (last != first and partial.get(last) is not None)
        if seal_first > seal_last:
            return PendingRead(self, out, offset, partial, (), None)
        plain = self._plaintext(seal_first, seal_last)
        dests, aside = self._destinations(memoryview(out), offset, seal_first, seal_last, partial, len(plain))
        # A read of a chunk or two (a random read) is sealed here: handing it to the thread
        # costs a wake-up, which on a busy machine can take longer than the sealing.
        sealing = _sealing_thread() if threaded and seal_last - seal_first >= _THREAD_MIN - 1 else None
        if sealing is not None:
            job = sealing.start(self._key, seal_first, self._chunks - 1, plain, dests)
            return PendingRead(self, out, offset, partial, aside, job)
        self._seal(plain, seal_first, dests)
        return PendingRead(self, out, offset, partial, aside, None)

    def _sealed_size(self, index: int) -> int:
        start, end = age.chunk_plaintext(index, self.plaintext_size)
        return end - start + TAG

    def _plaintext(self, first: int, last: int) -> bytes | bytearray:
        """The plaintext of chunks first..last, in one read of the wrapped reader."""
        start = first * CHUNK
        stop = age.chunk_plaintext(last, self.plaintext_size)[1]
        plain = self.plain.read(start, stop - start)
        if len(plain) != stop - start:
            raise ShortReadError(f"the byte source returned {len(plain)} of {stop - start} bytes "
                                 f"at offset {start} (size {self.plaintext_size})")
        return plain

    def _destinations(self, out: memoryview, offset: int, first: int, last: int, partial: dict,
                      plain_size: int) -> tuple[list, list[tuple[int, bytearray]]]:
        """Where each of chunks first..last is sealed: its place in ``out`` (which starts at
        file offset ``offset``), or, for those in ``partial``, a buffer of its own (also
        returned, with its chunk's index)."""
        dests, aside = [], []
        pos = age.chunk_offset(first, self._header_size) - offset
        for index in range(first, last + 1):
            n = min(CHUNK, plain_size - (index - first) * CHUNK) + TAG
            if index in partial:
                dest = bytearray(n)
                aside.append((index, dest))
                dests.append(dest)
            else:
                dests.append(out[pos:pos + n])
            pos += n
        return dests, aside

    def _seal(self, plain, first: int, dests: list) -> None:
        """Seal chunk first + i of ``plain`` into ``dests[i]``, here."""
        view, final = memoryview(plain), self._chunks - 1
        for i, dest in enumerate(dests):
            index = first + i
            data = view[i * CHUNK:(i + 1) * CHUNK]
            nonce = age.chunk_nonce(index, index == final)
            if self._encrypt_into is not None:
                self._encrypt_into(nonce, data, None, dest)
            else:
                dest[:] = self._encrypt(nonce, data, None)

    def _remember(self, index: int, sealed: bytes | bytearray) -> None:
        if not self._cache_chunks:
            return
        self._cache[index] = sealed
        self._cache.move_to_end(index)
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._cache.clear()
        close = getattr(self.plain, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> EncryptedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PendingRead:
    """A read :meth:`EncryptedReader.begin_read` began; dropping it unfinished waits for its
    sealing to end (the buffers it writes stay alive until then)."""

    def __init__(self, reader: EncryptedReader, out: bytearray, offset: int, partial: dict,
                 aside, job) -> None:
        self._reader, self._out, self._offset = reader, out, offset
        self._partial, self._aside, self._job = partial, aside, job

    def fileno(self) -> int | None:
        """A descriptor readable once the sealing is done; None if it was done already."""
        return None if self._job is None else self._job.fileno()

    def result(self) -> bytearray | bytes:
        """The bytes :meth:`EncryptedReader.read` gives (waiting for the sealing if needed):
        once. :class:`~tartapefs.TartapeError` if libcrypto failed to seal."""
        job, self._job = self._job, None
        if job is not None:
            try:
                job.finish()
            except RuntimeError as err:
                raise TartapeError(f"sealing the age payload failed: {err}") from None
        out, offset, reader, partial = self._out, self._offset, self._reader, self._partial
        for index, sealed in self._aside:
            partial[index] = sealed
            reader._remember(index, sealed)
        for index, sealed in partial.items():
            start = age.chunk_offset(index, reader._header_size)
            lo, hi = max(offset, start), min(offset + len(out), start + len(sealed))
            out[lo - offset:hi - offset] = memoryview(sealed)[lo - start:hi - start]
        return out if out else b""


class EncryptedTape:
    """``tape`` as an age v1 file, ``NAME.age``: what the mount serves and ``tartape stream``
    writes for a tape of an encrypted recording, under the tape's own ``state``.

    ``total_size`` is the encrypted size (bytes), ``plaintext_size`` the tape's,
    ``header_size`` the age header's; ``mtime``, ``number`` and ``index_path`` are the
    tape's; ``fingerprint`` covers the tape's and the state's header and nonce (never the
    key). ``reader()`` makes an :class:`~tartapefs.EncryptedReader` over the tape's reader.
    """

    def __init__(self, tape: Tape, state: EncryptionState) -> None:
        self.tape = tape
        self.state = state
        self.name = tape.name + ".age"
        self.number = tape.number
        self.index_path = tape.index_path
        self.plaintext_size = tape.total_size
        self.header_size = state.header_size
        self.total_size = state.encrypted_size(tape.total_size)
        self.mtime = tape.mtime
        self.fingerprint = hashlib.sha256(b"age\0%s\0%s%s" % (tape.fingerprint.encode(), state.header,
                                                                state.payload_nonce)).hexdigest()

    def reader(self, source_root: str | None = None) -> EncryptedReader:
        return EncryptedReader(self.tape.reader(source_root), self.state)


def read_recipients_file(path: str) -> list[Recipient]:
    """The recipients in the file at ``path`` (``age -R`` format, see
    :func:`tartapefs.age.parse_recipients`); at most 16 MiB is read. Raises
    :class:`RecipientError` naming the file: unreadable, too big, not UTF-8, a bad line, empty."""
    try:
        with open(path, "rb") as f:
            data = f.read(age.RECIPIENTS_FILE_LIMIT + 1)
    except OSError as err:
        raise RecipientError(f"{path}: cannot read the recipients file ({err.strerror})") from None
    if len(data) > age.RECIPIENTS_FILE_LIMIT:
        raise RecipientError(f"{path}: recipients file larger than 16 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipientError(f"{path}: recipients file is not UTF-8 text") from None
    return age.parse_recipients(text, path)


def load_recipients(recipients=(), files=()) -> list[Recipient]:
    """Recipients from ``age1…`` strings and recipients files together, in order, without
    repeats; :class:`RecipientError` for a bad one or none at all."""
    found = [age.parse_recipient(r) for r in recipients]
    for path in files:
        found += read_recipients_file(path)
    if not found:
        raise RecipientError("encryption needs at least one recipient")
    return age.unique(found)
