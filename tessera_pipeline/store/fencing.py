"""The store's lease record and the fence every commit passes: a driver's generation against the store's.

One driver at a time holds a store through `_run/lease.json` (taken and renewed by `run/lease.py`). Its
`generation` only grows: each driver that takes the lease writes the previous generation plus one, and a
finished driver marks the lease released instead of deleting it, so the count survives. Each commit
names the generation of the driver that dispatched the tile (`Fence`), and is refused (`FencedError`)
when the store's lease names a newer generation, or names this one but has not been renewed for its TTL
(the driver lost touch with the store and may be taken over any moment). Age is judged on the store's
clock (`Backend.get_timed`), never on the caller's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from tessera_pipeline.errors import FencedError
from tessera_pipeline.store.backend import Backend

log = logging.getLogger(__name__)

LEASE_KEY = "_run/lease.json"
LEASE_FORMAT = "tessera-lease/1"


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds a store: the run, the driver's nonce, host and pid, its last beat (its own clock, for
    people), the TTL, the generation, and whether it was released."""

    run_id: str
    driver_id: str
    host: str
    pid: int
    started_at: str
    beat_at: float
    ttl_s: float
    generation: int = 0
    released: bool = False
    format: str = LEASE_FORMAT

    def to_bytes(self) -> bytes:
        """The lease object's JSON."""
        return json.dumps(asdict(self), sort_keys=True).encode()


@dataclass(frozen=True)
class StoredLease:
    """The lease as read from the store: the record, its tag (for `put_if`) and its age on the store's clock."""

    record: LeaseRecord
    tag: str
    age_s: float

    def live(self) -> bool:
        """True while a driver holds it: not released and renewed within its TTL (store clock)."""
        return not self.record.released and self.age_s < self.record.ttl_s

    def expires_in_s(self) -> float:
        """Seconds until the lease lapses unless renewed (0 when it has)."""
        return 0.0 if self.record.released else max(0.0, self.record.ttl_s - self.age_s)

    def describe(self) -> str:
        """One phrase for messages: run, host, pid and last renewal."""
        r = self.record
        return (f"run {r.run_id} (driver on {r.host}, pid {r.pid}, last beat {self.age_s:.0f} s ago, "
                f"lease of {r.ttl_s:.0f} s)")


def parse_lease(raw: bytes) -> LeaseRecord:
    """A lease record from its JSON; an unreadable one reads as an expired lease of generation 0."""
    try:
        doc: dict[str, Any] = json.loads(raw)
        return LeaseRecord(**{k: doc[k] for k in LeaseRecord.__dataclass_fields__ if k in doc})
    except (ValueError, TypeError, KeyError):
        log.warning("%s is unreadable; treating it as an expired lease", LEASE_KEY)
        return LeaseRecord("?", "?", "?", 0, "", 0.0, 0.0)


def read_lease(backend: Backend) -> StoredLease | None:
    """The store's lease with its tag and store-clock age, or None when no driver ever held it."""
    found = backend.get_timed(LEASE_KEY)
    if found is None:
        return None
    return StoredLease(parse_lease(found.data), found.tag, found.age_s)


@dataclass(frozen=True)
class Fence:
    """What a commit is checked against: the generation of the driver that dispatched it, and its lease TTL."""

    generation: int
    ttl_s: float

    def check(self, backend: Backend, *, year: int, tile: str) -> None:
        """Raise FencedError when the store's lease has moved past this generation, or lapsed under it."""
        lease = read_lease(backend)
        if lease is None:
            raise FencedError(f"commit in {year} refused: the store has no lease, so generation "
                              f"{self.generation} holds nothing", tile=tile)
        held = lease.record.generation
        if held > self.generation:
            raise FencedError(f"commit in {year} refused: the store is now held by generation {held} "
                              f"({lease.describe()}), this write's driver was generation {self.generation}", tile=tile)
        if held == self.generation and (lease.record.released or lease.age_s >= lease.record.ttl_s):
            raise FencedError(f"commit in {year} refused: the lease of generation {held} was not renewed for "
                              f"{lease.age_s:.0f} s (TTL {lease.record.ttl_s:.0f} s); its driver may be taken "
                              "over", tile=tile)

    def admits_marker(self, marker_generation: int | None, *, year: int, tile: str) -> None:
        """Raise FencedError when the tile's current marker was written under a newer generation than this one."""
        if marker_generation is not None and marker_generation > self.generation:
            raise FencedError(f"commit in {year} refused: the tile was committed under generation "
                              f"{marker_generation}, newer than this write's {self.generation}", tile=tile)

