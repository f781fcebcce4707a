"""The storage interface the store is written against: the `Backend` protocol, its declared capabilities,
and the records its methods return.

Zarr writes and reads the bulk arrays through `Backend.zarr_store`; the rest is what the commit protocol
needs beyond zarr: a marker put that readers see whole or not at all, a put that happens only if the
object is still what the writer last read (`get_tagged` / `put_if`), durability, listings and deletes.
One module per implementation (local.py, s3.py, http.py, memory.py); `open_backend` picks one from a URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: Keys a listing request returns at most (S3's page; the in-memory store pages alike).
LIST_PAGE = 1000


@dataclass(frozen=True)
class TimedObject:
    """An object read with its content tag and its age in seconds as the store's clock tells it."""

    data: bytes
    tag: str
    age_s: float


@runtime_checkable
class Backend(Protocol):
    """What the commit protocol needs from a storage location, and what the location can do."""

    url: str
    #: True where listings of disjoint prefixes run faster side by side (S3), False where they share one disk.
    concurrent_listing: bool
    #: False where a LIST may be refused (plain HTTPS; anonymous S3, whose public buckets often allow GET
    #: only): readers then check the objects they need one by one instead of listing.
    listable: bool
    #: False for a read-only location (HTTPS): every put, delete and listing raises StoreError.
    writable: bool
    #: True where objects can be deleted (`delete`, `delete_tree`).
    deletes: bool
    #: True where `zarr_store` reads byte ranges of an object (sharded chunks) without fetching it whole.
    ranged_reads: bool

    def zarr_store(self, key: str = "") -> Any:
        """A zarr v3 store rooted at the store root, or at a prefix under it."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write an object that readers see entirely or not at all, durably."""

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and an opaque tag of that content (for `put_if`), or None when absent."""

    def get_timed(self, key: str) -> TimedObject | None:
        """The object's bytes, tag and age on the store's own clock (its last-modified time against the
        store's "now"), or None when absent: expiry judged this way is immune to the caller's clock skew."""

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """Write atomically only if the object's tag is still `tag` (None: only if absent).

        True when written (or when it already holds exactly `data`: a retried put whose first try
        landed), False when someone else changed it since `tag` was read.
        """

    @property
    def conditional_writes(self) -> bool:
        """True when `put_if` is enforced by the store; False: it is read-compare-put, racy."""

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write many new objects (keys nobody reads yet) as fast as the backend allows."""

    def exists(self, keys: list[str]) -> list[bool]:
        """Whether each object exists: a stat each locally, a HEAD each on S3 (many keys on S3: list instead)."""

    def list_children(self, key: str) -> list[str]:
        """Names of the immediate children of a prefix (files and folders); empty if absent."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key under a prefix, relative to the root, in one listing."""

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Every object whose key starts with `prefix` (a folder or a partial name), with its
        last-modified time (epoch seconds), streamed page by page (1,000 keys a request on S3)."""

    def delete_tree(self, key: str) -> None:
        """Delete a prefix and everything under it; absent is fine."""

    def delete(self, key: str) -> None:
        """Delete one object; absent is fine."""

    def make_durable(self, key: str) -> None:
        """Make everything written under a prefix durable before a commit marker names it."""


class ObjectStoreCapabilities:
    """The capabilities of a writable object store (S3, and the in-memory store that simulates it); a
    backend that can do less says so in its own attributes."""

    concurrent_listing = True
    listable = True
    writable = True
    deletes = True
    ranged_reads = True


def content_tag(data: bytes) -> str:
    """The tag of backends without a server-side one (local, HTTPS, memory): sha256 hex of the content."""
    return hashlib.sha256(data).hexdigest()
