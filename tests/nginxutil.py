"""nginx on a loopback port, serving one folder, for tests that talk HTTP to a real server.

``nginx`` (the fixture) starts one per call and stops them all when the test ends, failed or
not. With ``access_log=True`` every request is logged as ``STATUS BYTES RANGE`` (BYTES: the
body bytes nginx sent), so a test can bound what a client transferred.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mountutil import DEADLINE_S

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running nginx: its base URL and, when logged, its access log."""

    def __init__(self, url: str, log: Path | None) -> None:
        self.url = url
        self.log = log

    def requests(self, at_least: int = 0) -> list[tuple[int, int, str]]:
        """``(status, body bytes sent, Range header)`` of every request logged so far, once
        they add up to ``at_least`` body bytes (or DEADLINE_S has passed). nginx logs a
        request when it finalizes it, which may come after its client has read the last
        byte: without the wait, a test would miss the last request now and then."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            rows = []
            for line in self.log.read_text().splitlines():
                status, sent, byte_range = line.split(" ", 2)
                rows.append((int(status), int(sent), byte_range))
            if sum(n for _, n, _ in rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@pytest.fixture
def nginx(tmp_path):
    """``serve(root, access_log=False) -> Served``: nginx serving ``root`` on loopback."""
    started: list[subprocess.Popen] = []

    def serve(root: Path, access_log: bool = False) -> Served:
        port = free_port()
        prefix = tmp_path / f"nginx-{len(started)}"
        prefix.mkdir()
        log = prefix / "access.log" if access_log else None
        logging = (f"log_format counted '$status $body_bytes_sent $http_range'; access_log {log} counted;"
                   if log else "access_log off;")
        (prefix / "nginx.conf").write_text(f"""
daemon off;
user nobody nogroup;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    {logging}
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
                return Served(f"http://127.0.0.1:{port}", log)
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
