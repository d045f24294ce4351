"""Stand-ins for the network clients the TarTape READMEs use (requests, boto3, a socket).

The README examples run unchanged but for their import lines; these take the
place of the clients, which would need the network. Each consumes a file object
the way the real client does (requests sizes it with tell/seek, then reads it in
8 KiB blocks; boto3's upload_fileobj reads 8 MiB parts until b""), and keeps
what was sent in a :class:`Cloud`, so the test can check it. Objects over
``KEEP`` bytes are kept as their size and their first and last ``SAMPLE`` bytes.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

KEEP = 64 << 20
SAMPLE = 64 << 10


@dataclass
class Stored:
    size: int = 0
    head: bytes = b""  # the first SAMPLE bytes
    tail: bytes = b""  # the last SAMPLE bytes
    data: bytes | None = None  # everything, or None when over KEEP bytes


@dataclass
class Cloud:
    objects: dict[str, Stored] = field(default_factory=dict)  # URL or bucket/key -> what was sent
    served: dict[str, object] = field(default_factory=dict)  # URL -> seekable file object for GET
    gets: list[tuple[str, str]] = field(default_factory=list)  # (URL, Range) of every GET

    def store(self, key: str, reader, block: int) -> Stored:
        size, kept, tail = 0, bytearray(), b""
        while chunk := reader(block):
            size += len(chunk)
            tail = (tail + chunk)[-SAMPLE:]
            if len(kept) < KEEP:
                kept += chunk[: KEEP - len(kept)]
        data = bytes(kept)
        self.objects[key] = Stored(size, data[:SAMPLE], tail, data if size <= KEEP else None)
        return self.objects[key]


cloud = Cloud()


def reset() -> Cloud:
    global cloud
    cloud = Cloud()
    return cloud


class _Response:
    def __init__(self, status_code: int, content: bytes = b"") -> None:
        self.status_code = status_code
        self.content = content
        self.ok = status_code < 400


class _Requests:
    """``requests.put(url, data=file)`` and ``requests.get(url, headers={"Range": ...})``."""

    def put(self, url: str, data=None, headers=None) -> _Response:
        if hasattr(data, "read"):
            start = data.tell()  # requests' super_len: the size left from the current position
            data.seek(0, io.SEEK_END)
            length = data.tell() - start
            data.seek(start)
            stored = cloud.store(url, data.read, 8192)
            assert stored.size == length, f"sent {stored.size} bytes after announcing {length}"
        else:
            cloud.objects[url] = Stored(len(data), data[:SAMPLE], data[-SAMPLE:], bytes(data))
        return _Response(201)

    def get(self, url: str, headers=None) -> _Response:
        source = cloud.served[url]
        spec = (headers or {}).get("Range", "")
        cloud.gets.append((url, spec))
        first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", spec).groups())
        source.seek(first)
        return _Response(206, source.read(last - first + 1))


class _S3:
    def upload_fileobj(self, Fileobj, Bucket: str, Key: str, **_) -> None:  # noqa: N803 (boto3's names)
        cloud.store(f"{Bucket}/{Key}", Fileobj.read, 8 << 20)


class _Boto3:
    def client(self, service: str) -> _S3:
        assert service == "s3"
        return _S3()


requests = _Requests()
boto3 = _Boto3()


class Socket:
    """``network_socket.send(data)``: keeps everything sent."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)
