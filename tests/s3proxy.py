"""A flaky loopback proxy in front of the test S3 server: seeded random faults, targeted rules and an outage switch.

Clients point AWS_ENDPOINT_URL at the proxy; everything else is forwarded unchanged to moto.
Faults, each counted in `.counts` under its name:
- "503": a 503 SlowDown answer, nothing forwarded;
- "drop": the connection is closed without an answer, nothing forwarded;
- "lost": the request IS forwarded (it takes effect upstream), then the connection is closed
  without an answer: "write applied, answer lost";
- "outage": while `proxy.outage` is True every request fails, alternately 503 and dropped.
Targeted rules (`add_rule`) are consumed in the order they were added, before the random faults.
`ignore_conditional = True` strips If-Match / If-None-Match from PUTs: a store that ignores them.
`latency_s` delays every request by that long before it is forwarded: S3's first-byte latency, for benchmarks.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
CONDITIONAL_HEADERS = {"if-match", "if-none-match"}
ACTIONS = ("503", "drop", "lost")


@dataclass
class Rule:
    """A targeted fault: the next `times` requests matching method and path get `action`."""

    action: str
    method: str | None
    path_contains: str | None
    times: int

    def matches(self, method: str, path: str) -> bool:
        """True when this rule applies to a request."""
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


class FlakyProxy(ThreadingHTTPServer):
    """The server: forwards to `upstream`, failing `fail_rate` of requests (half 503, half dropped)."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up (after a dropped connection) are expected here: stay quiet."""

    def __init__(self, upstream: str, fail_rate: float, seed: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.rules: list[Rule] = []
        self.outage = False
        self.ignore_conditional = False
        self.latency_s = 0.0
        self._outage_n = 0

    def taken(self, method: str, contains: str = "") -> int:
        """Requests seen with this method whose path (with query) contains `contains`; LISTs carry `list-type`."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and contains in p)

    def add_rule(
        self, *, method: str | None = None, path_contains: str | None = None, action: str = "503", times: int = 1
    ) -> None:
        """Fail the next `times` requests with this method and path substring (None: any) with `action`."""
        if action not in ACTIONS or times < 1:
            raise ValueError(f"action must be one of {ACTIONS} and times >= 1, got {action!r}, {times}")
        with self.lock:
            self.rules.append(Rule(action, method.upper() if method else None, path_contains, times))

    def decide(self, method: str = "", path: str = "") -> str:
        """'ok', '503', 'drop' or 'lost' for the next request: outage, then rules, then the random faults."""
        with self.lock:
            self.requests.append((method, path))
            if self.outage:
                self._outage_n += 1
                self.counts["outage"] += 1
                return "503" if self._outage_n % 2 else "drop"
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    if rule.times == 0:
                        self.rules.remove(rule)
                    self.counts[rule.action] += 1
                    return rule.action
            roll = self.rng.random()
            outcome = "ok" if roll >= self.fail_rate else ("503" if roll < self.fail_rate / 2 else "drop")
            self.counts[outcome] += 1
            return outcome


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        """Quiet."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _hang_up(self) -> None:
        """Close the client connection without an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self) -> None:
        body = self._body()
        outcome = self.server.decide(self.command, self.path)
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        if outcome == "drop":
            self._hang_up()
            return
        if outcome == "503":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOWDOWN)))
            self.end_headers()
            self.wfile.write(SLOWDOWN)
            return
        skip = HOP_HEADERS | (CONDITIONAL_HEADERS if self.command == "PUT" and self.server.ignore_conditional else set())
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if outcome == "lost":
            self._hang_up()
            return
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                self.send_header(key, value)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@contextmanager
def flaky_proxy(upstream: str, *, fail_rate: float = 0.1, seed: int = 0) -> Iterator[FlakyProxy]:
    """Run the proxy on a free loopback port for the block; its URL is `http://127.0.0.1:{server_port}`."""
    server = FlakyProxy(upstream, fail_rate, seed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
