"""Storage backends: the `Backend` interface (base.py), one module per kind of location, and `open_backend`,
the one function from a location to a backend.

- local.py: a directory (or `file://`); s3.py: `s3://bucket/prefix`; http.py: `https://host/path`, read-only;
- memory.py: `memory://NAME[/prefix]`, a process-wide in-memory store with simulated latency and request
  counts, for tests and rehearsals (not a store to publish to).
"""

from __future__ import annotations

from tessera_pipeline import locations
from tessera_pipeline.errors import StoreError
from tessera_pipeline.store.backends.base import LIST_PAGE, Backend, TimedObject, content_tag
from tessera_pipeline.store.backends.http import HttpBackend
from tessera_pipeline.store.backends.local import LocalBackend
from tessera_pipeline.store.backends.memory import MEMORY_SCHEME, MemoryBackend, memory_bucket
from tessera_pipeline.store.backends.s3 import S3Backend

__all__ = [
    "LIST_PAGE",
    "Backend",
    "HttpBackend",
    "LocalBackend",
    "MemoryBackend",
    "S3Backend",
    "TimedObject",
    "content_tag",
    "memory_bucket",
    "open_backend",
]


def open_backend(url: str) -> Backend:
    """The backend for a store URL: `s3://bucket/prefix`, `https://host/path` (read-only), `memory://NAME[/prefix]`
    (in-process, for tests and rehearsals) or a local path (file:// allowed)."""
    if str(url).startswith(MEMORY_SCHEME):
        return MemoryBackend(str(url))
    try:
        where = locations.parse(url)
    except ValueError as exc:
        raise StoreError(f"unsupported store URL {url!r}: use a local path, s3://bucket/prefix or https://host/path") from exc
    if where.scheme == "s3":
        return S3Backend(url)
    if where.scheme in ("http", "https"):
        return HttpBackend(url)
    return LocalBackend(where.path)
