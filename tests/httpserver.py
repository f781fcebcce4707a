"""A plain read-only HTTP server for tests: serves a folder on loopback, no directory listings,
byte ranges (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`) honoured, every request recorded."""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """GET and HEAD of files with Range support; folders answer 404 (listing disabled)."""

    #: (method, path, Range header or None) of every request, shared by the server's handlers.
    requests: list[tuple[str, str, str | None]] = []
    #: Path -> how many more requests for it answer 503 (a flaky front), shared likewise.
    outages: dict[str, int] = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests read `requests` instead."""

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        """Listing disabled, as on an object store's HTTPS front."""
        self.send_error(404, "listing disabled")

    def do_HEAD(self) -> None:
        """Headers of a file, or 404."""
        self._serve(body=False)

    def do_GET(self) -> None:
        """A file, or the byte range of it the Range header asks for (206), or 404."""
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        """Answer one request for a file (whole or ranged); folders and absent files are 404."""
        wanted = self.headers.get("Range")
        self.requests.append((self.command, self.path, wanted))
        if self.outages.get(self.path, 0) > 0:
            self.outages[self.path] -= 1
            self.send_error(503, "try again")
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start, end, status = 0, len(data), 200
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or match.groups() == ("", ""):
                self.send_error(416, "bad range")
                return
            first, last = match.groups()
            if first == "":
                start = max(0, len(data) - int(last))
            else:
                start, end = int(first), min(len(data), int(last) + 1 if last else len(data))
            if start >= len(data) or start >= end:
                self.send_error(416, "range not satisfiable")
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])


@dataclass
class Served:
    """A running test server: its base URL, the request log and the outages to inject (path -> 503 count)."""

    url: str
    requests: list[tuple[str, str, str | None]]
    outages: dict[str, int]


@contextmanager
def http_server(root: Path) -> Iterator[Served]:
    """Serve `root` on a free loopback port for the block."""
    handler = type("Handler", (RangeHandler,), {"requests": [], "outages": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_address[1]}", handler.requests, handler.outages)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
