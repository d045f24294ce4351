"""The archive served over HTTP by nginx from the mount: whole, and by byte ranges.

nginx is the real server of the design's HTTP story: it reads the file with sendfile (the
kernel splices the mount's page cache), answers Range requests from the file's size, and runs
its workers as an unprivileged user, so the mount is made with ``-o allow_other``. Every byte
is compared with ``tartape stream``'s archive.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from mountutil import DEADLINE_S, NAME, NEEDS_MOUNT, stream_bytes
from nginxutil import NGINX, nginx  # noqa: F401  (nginx: the fixture)
from trees import _Builder, content

pytestmark = [
    NEEDS_MOUNT,
    pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (Debian package nginx)"),
]


def get(url: str, range_: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Range": range_} if range_ else {})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_nginx_serves_the_archive_whole_and_by_ranges(world_dir, world_mounts, nginx):
    src = world_dir / "data"
    b = _Builder(src)
    b.dir(b"sub")
    for i in range(40):  # members of every size class around the 512-byte blocks
        b.file(b"sub/f%02d.bin" % i, content(b"f%d" % i, (i * 7919) % 70_000))
    b.file(b"big.bin", content(b"big", 3 * 1024 * 1024 + 17))
    b.finish()
    reference = stream_bytes(src)
    mount = world_mounts.background(src, None, "-o", "allow_other")
    base = nginx(mount.mnt).url
    url = f"{base}/{NAME}"

    status, headers, body = get(url)
    assert status == 200 and int(headers["Content-Length"]) == len(reference)
    assert body == reference

    size = len(reference)
    for first, last in [(0, 0), (0, 511), (511, 512), (1000, 70_000), (size // 2, size // 2 + 1_000_000),
                        (size - 1024, size - 1)]:
        status, headers, body = get(url, f"bytes={first}-{last}")
        assert status == 206, (first, last, status)
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert body == reference[first : last + 1], (first, last)
    # A suffix range (the footer), and an open-ended one (resuming a download).
    assert get(url, "bytes=-1024")[2] == reference[-1024:] == bytes(1024)
    assert get(url, f"bytes={size - 5000}-")[2] == reference[size - 5000 :]
    # Past the end: 416, as for any file.
    assert get(url, f"bytes={size}-")[0] == 416
