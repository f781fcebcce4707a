"""One driver per store: a lease object in `_run/` that a driver takes before it writes anything and keeps
alive with a heartbeat.

The lease is taken and renewed with conditional writes (`Backend.put_if`): a second driver finds a live
lease and is refused with one line naming the run, its host and its last beat; after the lease expired
(the driver was killed, its head node lost) `takeover` replaces it, and the old driver, should it still
be alive, sees its next beat refused and stops. Clocks: the expiry compares wall-clock times written by
different hosts, so the TTL must stay well above their skew (60 s by default; NTP keeps VMs within ms).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from tessera_pipeline.errors import RunError
from tessera_pipeline.store.backend import Backend

log = logging.getLogger(__name__)

LEASE_KEY = "_run/lease.json"
LEASE_FORMAT = "tessera-lease/1"


class LeaseHeldError(RunError):
    """Another driver holds (or may still hold) the store's lease."""


class LeaseLostError(RunError):
    """This driver's lease was taken over: it must stop scheduling at once."""


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a store: the run, the driver's host and pid, and its last heartbeat (epoch seconds)."""

    run_id: str
    driver_id: str
    host: str
    pid: int
    started_at: str
    beat_at: float
    ttl_s: float
    format: str = LEASE_FORMAT

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the last beat."""
        return max(0.0, (time.time() if now is None else now) - self.beat_at)

    def live(self, now: float | None = None) -> bool:
        """True while the last beat is younger than the TTL."""
        return self.age_s(now) < self.ttl_s

    def describe(self) -> str:
        """One phrase for messages: run, host, pid and last beat."""
        return (f"run {self.run_id} (driver on {self.host}, pid {self.pid}, last beat {self.age_s():.0f} s ago, "
                f"lease of {self.ttl_s:.0f} s)")

    def to_bytes(self) -> bytes:
        """The lease object's JSON."""
        return json.dumps(asdict(self), sort_keys=True).encode()


def read_lease(backend: Backend) -> tuple[LeaseInfo, str] | None:
    """The store's lease and its tag, or None when no driver holds it."""
    found = backend.get_tagged(LEASE_KEY)
    if found is None:
        return None
    raw, tag = found
    try:
        doc: dict[str, Any] = json.loads(raw)
        return LeaseInfo(**{k: doc[k] for k in LeaseInfo.__dataclass_fields__ if k in doc}), tag
    except (ValueError, TypeError, KeyError):
        log.warning("%s/%s is unreadable; treating it as an expired lease", backend.url, LEASE_KEY)
        return LeaseInfo("?", "?", "?", 0, "", 0.0, 0.0), tag


class StoreLease:
    """This driver's lease on a store: `acquire`, a heartbeat thread, `release`; `lost` is set on takeover."""

    def __init__(self, backend: Backend, run_id: str, *, ttl_s: float, takeover: bool = False) -> None:
        self.backend = backend
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.takeover = takeover
        self.driver_id = uuid.uuid4().hex
        self.started_at = datetime.now(timezone.utc).isoformat()
        self.lost = threading.Event()
        self.lost_reason = ""
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_beats = 0

    def _doc(self) -> bytes:
        return LeaseInfo(self.run_id, self.driver_id, socket.gethostname(), os.getpid(), self.started_at,
                         time.time(), self.ttl_s).to_bytes()

    def acquire(self) -> LeaseInfo | None:
        """Take the lease, or raise LeaseHeldError naming who holds it; returns the lease replaced, if any."""
        current = read_lease(self.backend)
        tag: str | None = None
        replaced: LeaseInfo | None = None
        url = self.backend.url
        if current is not None:
            info, tag = current
            if info.live():
                raise LeaseHeldError(f"{url} is in use by {info.describe()}: one driver per store; wait for it "
                                     f"to finish, or stop it (`tessera-pipeline status --store {url}` shows it)")
            if not self.takeover:
                raise LeaseHeldError(f"{url} was in use by {info.describe()}; its lease has expired, so that driver "
                                     f"is probably dead: pass --takeover to take the store over")
            replaced = info
        data = self._doc()
        if not self.backend.put_if(LEASE_KEY, data, tag=tag):
            now = read_lease(self.backend)
            who = now[0].describe() if now else "another driver"
            raise LeaseHeldError(f"{url} was just taken by {who}")
        self._tag = self._own_tag(data)
        if replaced is not None:
            log.warning("took over %s from %s", url, replaced.describe())
        return replaced

    def _own_tag(self, data: bytes) -> str | None:
        found = self.backend.get_tagged(LEASE_KEY)
        if found is None or found[0] != data:
            return None
        return found[1]

    def beat(self) -> bool:
        """Renew the lease; False (and `lost` set) when another driver took it. Store errors are retried later."""
        if self.lost.is_set():
            return False
        data = self._doc()
        try:
            ok = self._tag is not None and self.backend.put_if(LEASE_KEY, data, tag=self._tag)
            if ok:
                self._tag = self._own_tag(data) or self._tag
                self.failed_beats = 0
                return True
            holder = read_lease(self.backend)
        except Exception as exc:  # the store is unreachable: keep running, beat again soon
            self.failed_beats += 1
            log.warning("lease heartbeat failed (%d in a row): %s", self.failed_beats, str(exc).splitlines()[0])
            return True
        who = holder[0].describe() if holder else "nobody (the lease was deleted)"
        self.lost_reason = f"the lease on {self.backend.url} was taken over; it is now held by {who}"
        self.lost.set()
        log.error("%s: stopping this driver", self.lost_reason)
        return False

    def start_heartbeat(self) -> None:
        """Beat every third of the TTL in a background thread until `release`."""

        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3.0):
                if not self.beat():
                    return

        self._thread = threading.Thread(target=loop, name="tessera-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLostError when the lease was taken over (the driver loop calls this every round)."""
        if self.lost.is_set():
            raise LeaseLostError(self.lost_reason)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost.is_set():
            return
        try:
            current = read_lease(self.backend)
            if current is not None and current[0].driver_id == self.driver_id:
                self.backend.delete(LEASE_KEY)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not release the lease on %s (it expires in %.0f s): %s", self.backend.url,
                        self.ttl_s, str(exc).splitlines()[0])
