"""The archive served over HTTP by nginx from the mount: whole, and by byte ranges.

nginx is the real server of the design's HTTP story: it reads the file with sendfile (the
kernel splices the mount's page cache), answers Range requests from the file's size, and runs
its workers as an unprivileged user, so the mount is made with ``-o allow_other``. Every byte
is compared with ``tartape stream``'s archive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mountutil import DEADLINE_S, NAME, NEEDS_MOUNT, stream_bytes
from trees import _Builder, content

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = [
    NEEDS_MOUNT,
    pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (Debian package nginx)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(tmp_path):
    """Starts nginx serving a folder on a loopback port; stops it at the end, failed or not."""
    started: list[subprocess.Popen] = []

    def serve(root: Path) -> str:
        port = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(f"""
daemon off;
user nobody nogroup;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/x-tar tar; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited {proc.returncode}: {proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not start listening")
                time.sleep(0.05)

    yield serve
    for proc in started:
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    base = nginx(mount.mnt)
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
