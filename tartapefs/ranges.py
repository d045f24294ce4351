"""Byte ranges of an archive that is somewhere else: a local file, or an http(s) URL.

Both answer ``read(offset, size)`` with exactly those bytes or an error, and
``chunks(offset, size)`` with the same bytes in pieces, so a large member never
sits in memory whole. Over HTTP every read is one ``Range`` request on a kept-alive
connection (standard library ``http.client`` only); a server that answers a
``Range`` request with the whole file (200) does not support ranges, and that is
said in one line instead of downloading the archive. ``transferred`` counts the
body bytes received, for reports and tests.
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import ArchiveError, UsageError, show_path

if TYPE_CHECKING:  # imported when a URL is opened: a local archive spares the start-up time
    import http.client

CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def open_archive(location: str) -> FileSource | HttpSource:
    """The archive at ``location``: an ``http://``/``https://`` URL or a local path."""
    if re.match(r"(?i)https?://", location):
        return HttpSource(location)
    return FileSource(location)


class FileSource:
    """A local archive file, read with ``pread`` (no shared position)."""

    def __init__(self, path: str) -> None:
        self.name = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise UsageError(f"{show_path(path)}: cannot open the archive ({err.strerror})") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise UsageError(f"{show_path(path)}: not a regular file")
        self.size: int = st.st_size
        self.transferred = 0

    def read_tail(self, size: int) -> bytes:
        """The archive's last ``size`` bytes (fewer if it is smaller)."""
        size = min(size, self.size)
        return self.read(self.size - size, size)

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset``: one ``pread`` into one new buffer (a
        large range is neither zero-filled first nor joined from pieces)."""
        data = os.pread(self._fd, size, offset)
        if len(data) == size:
            self.transferred += size
            return data
        return b"".join(self.chunks(offset, size))

    def chunks(self, offset: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
        end = offset + size
        while offset < end:
            data = os.pread(self._fd, min(chunk, end - offset), offset)
            if not data:
                raise ArchiveError(f"{show_path(self.name)}: truncated: no bytes at offset {offset} "
                                   f"(the archive has {self.size})")
            self.transferred += len(data)
            offset += len(data)
            yield data

    def sibling(self, suffix: str) -> str | None:
        """The local path of ``ARCHIVE + suffix`` when it is a regular file, else None."""
        path = self.name + suffix
        try:
            return path if stat.S_ISREG(os.stat(path).st_mode) else None
        except OSError:
            return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class HttpSource:
    """An archive behind an http(s) URL, read by ``Range`` requests."""

    def __init__(self, url: str) -> None:
        self.name = url
        self.transferred = 0
        self._conn: http.client.HTTPConnection | None = None
        self._temp: list[str] = []
        # One request learns the size (Content-Range) and brings the tail along.
        self.size = -1
        self.tail: bytes = b""

    def read_tail(self, size: int) -> bytes:
        """The archive's last ``size`` bytes (fewer if it is smaller); sets ``size``."""
        response, url = self._get(self.name, f"bytes=-{size}")
        if response.status == 416:  # an empty file has no last bytes
            response.read()
            self.size = 0
            return b""
        first, last, total = self._check_range(response, url)
        if total is None or last != total - 1:
            raise ArchiveError(f"{url}: the server's answer to a tail request is not the tail")
        self.size = total
        return self._body(response, last - first + 1, first)

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset``: one request, read as one buffer."""
        if size <= 0:
            return b""
        data = self._range(offset, size).read(size)
        if len(data) != size:
            raise ArchiveError(f"{self.name}: the connection ended {size - len(data)} bytes before the end of a range")
        self.transferred += size
        return data

    def _range(self, offset: int, size: int) -> http.client.HTTPResponse:
        response, url = self._get(self.name, f"bytes={offset}-{offset + size - 1}")
        first, last, _ = self._check_range(response, url)
        if (first, last) != (offset, offset + size - 1):
            response.close()
            raise ArchiveError(f"{url}: asked for bytes {offset}-{offset + size - 1}, the server sent {first}-{last}")
        return response

    def chunks(self, offset: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
        if size <= 0:
            return
        response = self._range(offset, size)
        url = self.name
        left = size
        while left:
            data = response.read(min(chunk, left))
            if not data:
                raise ArchiveError(f"{url}: the connection ended {left} bytes before the end of a range")
            self.transferred += len(data)
            left -= len(data)
            yield data

    def sibling(self, suffix: str) -> str | None:
        """``URL + suffix`` downloaded into a temporary file (removed by close()), or None (404)."""
        response, url = self._get(self.name + suffix, None)
        if response.status in (404, 410):
            response.read()
            return None
        if response.status != 200:
            response.read()
            raise ArchiveError(f"{url}: HTTP {response.status} {response.reason}")
        import tempfile

        fd, path = tempfile.mkstemp(prefix="tartape-", suffix=suffix)
        self._temp.append(path)
        with os.fdopen(fd, "wb") as out:
            while data := response.read(CHUNK):
                self.transferred += len(data)
                out.write(data)
        return path

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for path in self._temp:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._temp.clear()

    # -- inside -------------------------------------------------------------------------

    def _get(self, url: str, byte_range: str | None) -> tuple[http.client.HTTPResponse, str]:
        """GET ``url`` (redirects followed), on the kept-alive connection when it still holds."""
        for _ in range(_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"Range": byte_range} if byte_range else {}
            response = self._send(parts, target, headers, url)
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                response.read()
                self.close_connection()
                url = urllib.parse.urljoin(url, response.getheader("Location"))
                continue
            return response, url
        raise ArchiveError(f"{self.name}: more than {_REDIRECTS} redirects")

    def _send(self, parts, target: str, headers: dict, url: str) -> http.client.HTTPResponse:
        import http.client

        for attempt in (1, 2):
            conn = self._connection(parts)
            try:
                conn.request("GET", target, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close_connection()  # a kept-alive connection the server closed: once more
                if attempt == 2:
                    raise ArchiveError(f"{url}: the server closed the connection") from None
            except (OSError, http.client.HTTPException) as err:
                self.close_connection()
                reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
                raise ArchiveError(f"{url}: {reason}") from None
        raise AssertionError("unreachable")

    def _connection(self, parts) -> http.client.HTTPConnection:
        import http.client

        key = (parts.scheme.lower(), parts.hostname, parts.port)
        if self._conn is not None and getattr(self, "_key", None) == key:
            return self._conn
        self.close_connection()
        if not parts.hostname:
            raise UsageError(f"{self.name}: no host in the URL")
        cls = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
        self._conn = cls(parts.hostname, parts.port, timeout=_TIMEOUT_S)
        self._key = key
        return self._conn

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check_range(self, response: http.client.HTTPResponse, url: str) -> tuple[int, int, int | None]:
        if response.status == 200:
            self.close_connection()  # never download the whole archive by accident
            raise ArchiveError(f"{url}: the server does not serve byte ranges (it answered a Range "
                               f"request with the whole file); download the archive and extract from the file")
        if response.status != 206:
            response.read()
            raise ArchiveError(f"{url}: HTTP {response.status} {response.reason}")
        match = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range") or "")
        if not match:
            self.close_connection()
            raise ArchiveError(f"{url}: a partial answer without a valid Content-Range")
        total = None if match[3] == "*" else int(match[3])
        return int(match[1]), int(match[2]), total

    def _body(self, response: http.client.HTTPResponse, size: int, offset: int) -> bytes:
        data = response.read(size)
        if len(data) != size:
            raise ArchiveError(f"{self.name}: the connection ended in the range at offset {offset}")
        self.transferred += len(data)
        return data
