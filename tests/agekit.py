"""Helpers for the age tests: keys from the real age-keygen, the C2SP test vectors, byte
sources held in memory, and a payload decrypter written from the spec for checking our bytes
where running the age tool is not practical (single chunks of a multi-GiB file)."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TESTKIT = Path(__file__).parent / "data" / "age-testkit"
CHUNK, TAG = 64 * 1024, 16


@dataclass(frozen=True)
class Key:
    """One identity made by age-keygen: its file (for age -i), secret and public strings."""

    path: Path
    secret: str
    public: str


def keygen(folder: Path, name: str = "key.txt") -> Key:
    path = folder / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    secret = next(ln for ln in path.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                            text=True).stdout.strip()
    return Key(path, secret, public)


def age_decrypt(data: bytes, *keys: Key) -> subprocess.CompletedProcess:
    """The stock age tool decrypting ``data`` with the given identities."""
    args = [a for k in keys for a in ("-i", str(k.path))]
    return subprocess.run(["age", "-d", *args], input=data, capture_output=True)


class MemoryReader:
    """A byte source over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.total_size = len(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return self.data[offset:offset + size]


class ZeroReader:
    """A byte source of ``total_size`` zero bytes, never held whole."""

    def __init__(self, total_size: int) -> None:
        self.total_size = total_size

    def read(self, offset: int, size: int) -> bytes:
        return bytes(max(0, min(size, self.total_size - offset)))


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, nonce, b"payload").derive(file_key)


def open_chunk(file_key: bytes, nonce: bytes, index: int, sealed: bytes, last: bool) -> bytes:
    """Chunk ``index`` decrypted, as the spec says; raises InvalidTag if it is not that chunk
    (wrong counter, wrong final flag, wrong bytes)."""
    chunk_nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
    return ChaCha20Poly1305(payload_key(file_key, nonce)).decrypt(chunk_nonce, sealed, None)


@dataclass(frozen=True)
class Vector:
    """One C2SP age test vector (tests/data/age-testkit, see its README)."""

    name: str
    expect: str
    payload_sha256: str | None
    file_key: bytes | None
    identity: str | None
    file: bytes

    def header_end(self) -> int:
        """Length of the header: up to the line feed after the MAC line."""
        mac = self.file.find(b"\n---")
        return self.file.index(b"\n", mac + 1) + 1

    def chunks(self) -> list[bytes]:
        """The sealed chunks after the header and the 16-byte nonce (the last may be short)."""
        body = self.file[self.header_end() + 16:]
        return [body[i:i + CHUNK + TAG] for i in range(0, len(body), CHUNK + TAG)] or [b""]

    def nonce(self) -> bytes:
        start = self.header_end()
        return self.file[start:start + 16]


def vector(name: str) -> Vector:
    raw = (TESTKIT / name).read_bytes()
    fields: dict[str, str] = {}
    while True:
        line, raw = raw.split(b"\n", 1)
        if not line:
            break
        key, _, value = line.decode().partition(": ")
        fields[key] = value
    if fields.get("compressed") == "zlib":
        raw = zlib.decompress(raw)
    return Vector(name, fields["expect"], fields.get("payload"),
                  bytes.fromhex(fields["file key"]) if "file key" in fields else None,
                  fields.get("identity"), raw)


def vectors(expect: str) -> list[str]:
    return sorted(p.name for p in TESTKIT.iterdir()
                  if p.name != "README.md" and vector(p.name).expect == expect)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
