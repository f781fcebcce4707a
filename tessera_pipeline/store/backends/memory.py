"""An in-process store at `memory://NAME[/prefix]` that behaves like S3 and says what it was asked: the
simulated S3 of tests and rehearsals, never a store to publish to (it is gone when the process ends).

Every backend on the same NAME shares one `MemoryBucket` (a process-wide registry), which holds the
objects (bytes, an S3-style ETag, a LastModified on the bucket's own clock), a per-request latency (the
first byte, slept outside any lock) and a count of every request by kind: GET, PUT, HEAD, DELETE (one
DeleteObject or one DeleteObjects batch of up to 1,000 keys) and LIST (one page of up to 1,000 keys).
Conditional puts follow S3: If-None-Match: * when absent, If-Match: ETag otherwise, a refusal then read.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from tessera_pipeline.errors import StoreError
from tessera_pipeline.store.backends.base import LIST_PAGE, ObjectStoreCapabilities, TimedObject

MEMORY_SCHEME = "memory://"

#: The kinds of request a bucket counts.
REQUEST_KINDS = ("GET", "PUT", "HEAD", "DELETE", "LIST")

#: `put_many` writes this many objects side by side, as s3fs batches its PUTs: one latency per wave.
PUT_WAVE = 128


@dataclass(frozen=True)
class _Object:
    """A stored object: its bytes, its ETag (quoted md5, as S3 sends a single PUT's) and its LastModified."""

    data: bytes
    tag: str
    modified: float


class MemoryClock:
    """A bucket's own clock: epoch seconds that advance with the monotonic clock and can be moved forward
    (`advance`), so a test ages a lease without sleeping and without touching the process's `time.time`."""

    def __init__(self) -> None:
        self._origin = time.clock_gettime(time.CLOCK_REALTIME) - time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        """The bucket's current time, epoch seconds."""
        return self._origin + time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward (objects written before look `seconds` older)."""
        self._offset += seconds


class MemoryBucket:
    """One named in-memory store: its objects, clock, latency per request and request counts."""

    def __init__(self, name: str, latency_s: float = 0.0) -> None:
        self.name = name
        self.latency_s = latency_s
        self.clock = MemoryClock()
        self.objects: dict[str, _Object] = {}
        self.lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, kind: str, n: int = 1) -> None:
        """Count `n` requests of a kind (no latency: callers in an event loop sleep asynchronously)."""
        with self.lock:
            self._counts[kind] += n

    def charge(self, kind: str, n: int = 1, *, waits: int | None = None) -> None:
        """Count `n` requests and sleep the latency of `waits` of them in turn (default: all `n`, one after another)."""
        self.count(kind, n)
        waited = n if waits is None else waits
        if self.latency_s > 0 and waited > 0:
            time.sleep(self.latency_s * waited)

    def requests(self) -> dict[str, int]:
        """Requests made so far, by kind (every kind present, zero included)."""
        with self.lock:
            return {kind: self._counts[kind] for kind in REQUEST_KINDS}

    def reset_requests(self) -> dict[str, int]:
        """The counts so far, then zero them (a rehearsal reads each stage's requests this way)."""
        with self.lock:
            counts = {kind: self._counts[kind] for kind in REQUEST_KINDS}
            self._counts.clear()
        return counts


_BUCKETS: dict[str, MemoryBucket] = {}
_REGISTRY_LOCK = threading.Lock()


def memory_bucket(name: str, *, latency_s: float | None = None) -> MemoryBucket:
    """The process-wide bucket called `name` (created empty on first use); `latency_s` sets its latency per request."""
    with _REGISTRY_LOCK:
        bucket = _BUCKETS.get(name)
        if bucket is None:
            bucket = _BUCKETS[name] = MemoryBucket(name)
    if latency_s is not None:
        bucket.latency_s = latency_s
    return bucket


def _etag(data: bytes) -> str:
    """S3's ETag of a single-PUT object: its md5 hex, in quotes (the same bytes put again keep the same tag)."""
    return f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - a content tag, as S3 makes it, not a security hash


def _pages(n: int) -> int:
    """LIST requests a listing of `n` entries takes (an empty listing still costs one)."""
    return max(1, math.ceil(n / LIST_PAGE))


class MemoryBackend(ObjectStoreCapabilities):
    """A store in a named process-wide `MemoryBucket`, with S3's semantics and request pattern."""

    conditional_writes = True

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        name, _, base = self.url[len(MEMORY_SCHEME) :].partition("/")
        if not name:
            raise StoreError(f"bad in-memory store URL {url!r}: expected memory://NAME[/prefix]")
        self.base = base.strip("/")
        self.bucket = memory_bucket(name)

    def _full(self, key: str) -> str:
        """The bucket key of a store key."""
        return f"{self.base}/{key}" if self.base and key else (self.base or key)

    def _folder(self, key: str) -> str:
        """The bucket prefix of everything under a store prefix ("" for the bucket's root)."""
        full = self._full(key).strip("/")
        return f"{full}/" if full else ""

    def _relative(self, full: str) -> str:
        """A bucket key back as a store key."""
        return full[len(self.base) + 1 :] if self.base else full

    def requests(self) -> dict[str, int]:
        """Requests made to this store's bucket so far, by kind."""
        return self.bucket.requests()

    def reset_requests(self) -> dict[str, int]:
        """The bucket's request counts so far, then zeroed."""
        return self.bucket.reset_requests()

    def zarr_store(self, key: str = "") -> Any:
        """A zarr v3 store over the same objects (each read a counted GET, each write a counted PUT)."""
        return _zarr_store_class()(store_dict=_ZarrView(self, self._full(key).strip("/")))

    def _read(self, key: str) -> _Object | None:
        """One GET of an object."""
        self.bucket.charge("GET")
        return self.bucket.objects.get(self._full(key))

    def _write(self, key: str, data: bytes) -> None:
        """Store an object now (the caller counted its PUT and holds the lock where it compares first)."""
        self.bucket.objects[self._full(key)] = _Object(bytes(data), _etag(data), self.bucket.clock.now())

    def get(self, key: str) -> bytes | None:
        """One GET: the object's bytes, or None when absent."""
        found = self._read(key)
        return None if found is None else found.data

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """One GET: the bytes and the ETag, or None when absent."""
        found = self._read(key)
        return None if found is None else (found.data, found.tag)

    def get_timed(self, key: str) -> TimedObject | None:
        """One GET: bytes, ETag and age (the bucket clock's now minus the object's LastModified), or None."""
        found = self._read(key)
        if found is None:
            return None
        return TimedObject(found.data, found.tag, max(0.0, self.bucket.clock.now() - found.modified))

    def put_atomic(self, key: str, data: bytes) -> None:
        """One PUT: the object is replaced whole."""
        self.bucket.charge("PUT")
        with self.bucket.lock:
            self._write(key, data)

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """One conditional PUT (If-None-Match: * when `tag` is None, else If-Match: tag); refused, one GET to
        tell a retry whose first try landed (same bytes: True) from someone else's write (False)."""
        self.bucket.charge("PUT")
        with self.bucket.lock:
            current = self.bucket.objects.get(self._full(key))
            if (None if current is None else current.tag) == tag:
                self._write(key, data)
                return True
        found = self._read(key)
        return found is not None and found.data == data

    def put_many(self, items: dict[str, bytes]) -> None:
        """A PUT per object, sent side by side in waves of `PUT_WAVE` (one latency a wave)."""
        if not items:
            return
        self.bucket.charge("PUT", len(items), waits=math.ceil(len(items) / PUT_WAVE))
        with self.bucket.lock:
            for key, data in items.items():
                self._write(key, data)

    def exists(self, keys: list[str]) -> list[bool]:
        """A HEAD per object, one after another (as S3Backend sends them)."""
        self.bucket.charge("HEAD", len(keys))
        objects = self.bucket.objects
        return [self._full(key) in objects for key in keys]

    def _under(self, folder: str) -> list[str]:
        """Bucket keys under a bucket prefix, sorted as S3 lists them (no request counted)."""
        with self.bucket.lock:
            return sorted(k for k in self.bucket.objects if k.startswith(folder))

    def list_children(self, key: str) -> list[str]:
        """Immediate children of a prefix: a delimited listing, a LIST per 1,000 names."""
        folder = self._folder(key)
        names = sorted({k[len(folder) :].split("/", 1)[0] for k in self._under(folder)})
        self.bucket.charge("LIST", _pages(len(names)))
        return names

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under a prefix: an undelimited listing, a LIST per 1,000 keys."""
        found = self._under(self._folder(prefix))
        self.bucket.charge("LIST", _pages(len(found)))
        return [self._relative(k) for k in found]

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Keys starting with `prefix` (a folder or a partial name) and their LastModified, a LIST per page
        of 1,000, each page counted as it is streamed."""
        start = self._full(prefix) if prefix else self._folder("")
        found = self._under(start)
        for first in range(0, max(1, len(found)), LIST_PAGE):
            self.bucket.charge("LIST")
            for full in found[first : first + LIST_PAGE]:
                obj = self.bucket.objects.get(full)
                if obj is not None:
                    yield self._relative(full), obj.modified

    def delete_tree(self, key: str) -> None:
        """Delete everything under a prefix: its listing, then a DeleteObjects per 1,000 keys."""
        found = self._under(self._folder(key))
        self.bucket.charge("LIST", _pages(len(found)))
        if found:
            self.bucket.charge("DELETE", math.ceil(len(found) / LIST_PAGE))
            with self.bucket.lock:
                for full in found:
                    self.bucket.objects.pop(full, None)

    def delete(self, key: str) -> None:
        """One DeleteObject (absent is fine, as on S3)."""
        self.bucket.charge("DELETE")
        with self.bucket.lock:
            self.bucket.objects.pop(self._full(key), None)

    def make_durable(self, key: str) -> None:
        """Nothing to do (as on S3: a PUT that returned is durable)."""


class _ZarrView(MutableMapping[str, Any]):
    """The objects under a bucket prefix as the mapping of zarr Buffers a zarr MemoryStore reads and writes:
    a read is a counted GET, a write a counted PUT, a membership test a HEAD, an iteration a listing."""

    def __init__(self, backend: MemoryBackend, prefix: str) -> None:
        self.backend = backend
        self.bucket = backend.bucket
        self.prefix = f"{prefix}/" if prefix else ""

    def __getitem__(self, key: str) -> Any:
        """One GET: the object as a zarr Buffer (KeyError when absent, as zarr expects of a mapping)."""
        from zarr.core.buffer import default_buffer_prototype

        self.bucket.count("GET")
        found = self.bucket.objects.get(self.prefix + key)
        if found is None:
            raise KeyError(key)
        return default_buffer_prototype().buffer.from_bytes(found.data)

    def __setitem__(self, key: str, value: Any) -> None:
        """One PUT of a zarr Buffer's bytes."""
        self.bucket.count("PUT")
        data = value.to_bytes()
        with self.bucket.lock:
            self.bucket.objects[self.prefix + key] = _Object(data, _etag(data), self.bucket.clock.now())

    def __delitem__(self, key: str) -> None:
        """One DeleteObject (KeyError when absent)."""
        self.bucket.count("DELETE")
        with self.bucket.lock:
            if self.bucket.objects.pop(self.prefix + key, None) is None:
                raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        """One HEAD."""
        self.bucket.count("HEAD")
        return isinstance(key, str) and self.prefix + key in self.bucket.objects

    def __iter__(self) -> Iterator[str]:
        """The keys under the prefix: a LIST per 1,000."""
        found = self.backend._under(self.prefix)
        self.bucket.count("LIST", _pages(len(found)))
        return iter([k[len(self.prefix) :] for k in found])

    def __len__(self) -> int:
        """How many keys are under the prefix (a listing)."""
        return len(list(iter(self)))

    def __eq__(self, other: object) -> bool:
        """Identity: comparing two views must not read two stores whole."""
        return self is other

    __hash__ = object.__hash__


@functools.cache
def _zarr_store_class() -> type:
    """zarr's MemoryStore whose reads and writes wait the bucket's latency without blocking the event loop."""
    import zarr.storage

    class LatentMemoryStore(zarr.storage.MemoryStore):
        """A MemoryStore over a `_ZarrView`: each get and set sleeps the bucket's latency asynchronously."""

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            """Wait the first-byte latency, then read the object (or a byte range of it)."""
            await asyncio.sleep(self._store_dict.bucket.latency_s)
            return await super().get(key, prototype, byte_range)

        async def set(self, key: str, value: Any, byte_range: tuple[int, int] | None = None) -> None:
            """Wait the latency, then write the object."""
            await asyncio.sleep(self._store_dict.bucket.latency_s)
            await super().set(key, value, byte_range)

    return LatentMemoryStore
