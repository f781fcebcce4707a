"""One driver per store: the lease a driver takes before it writes anything, renews while it runs, and the
generation that fences every commit it dispatches.

The lease object (`store/fencing.py`) is taken and renewed with conditional writes. A second driver is
refused while the lease is live, judged on the store's clock (the object's age as the store reports it),
so a host whose clock runs ahead cannot take over a live driver. After the lease lapsed (the driver was
killed, its head node lost) `takeover` replaces it with the next generation; a driver on this host whose
process is gone is known dead and taken over at once. Renewal never deposes its own holder: a refused
renewal re-reads the lease and goes on when it still names this driver (a renewal whose answer was lost).
A driver that cannot renew stops dispatching after half the TTL; after the TTL the store refuses its
commits (`Fence`); it stops for good when another driver holds the lease or it stayed unrenewed for
`max_unrenewed_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from tessera_pipeline.errors import RunError
from tessera_pipeline.store.backend import Backend
from tessera_pipeline.store.fencing import (
    LEASE_KEY,
    Fence,
    LeaseRecord,
    StoredLease,
    read_lease,
)

log = logging.getLogger(__name__)

__all__ = ["LEASE_KEY", "LeaseHeldError", "LeaseLostError", "StoreLease", "pid_is_gone", "read_lease"]


class LeaseHeldError(RunError):
    """Another driver holds (or may still hold) the store's lease."""


class LeaseLostError(RunError):
    """This driver no longer holds its lease (taken over, or unrenewable for too long): it must stop."""


def pid_is_gone(lease: StoredLease) -> bool:
    """True when the lease's driver ran on this host and its process no longer exists."""
    if lease.record.host != socket.gethostname() or lease.record.pid <= 0:
        return False
    try:
        os.kill(lease.record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StoreLease:
    """This driver's lease on a store: `acquire`, a heartbeat thread, `release`; `fence` for its commits.

    `max_unrenewed_s`: how long a driver whose renewals fail (the store unreachable from it) waits for the
    store before it gives up; its commits are refused by the store from one TTL on either way.
    """

    def __init__(self, backend: Backend, run_id: str, *, ttl_s: float, takeover: bool = False,
                 max_unrenewed_s: float = 1800.0, command: str = "resume") -> None:
        self.backend = backend
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.takeover = takeover
        self.max_unrenewed_s = max(float(max_unrenewed_s), self.ttl_s)
        self.command = command
        self.driver_id = uuid.uuid4().hex
        self.started_at = datetime.now(timezone.utc).isoformat()
        self.generation = 0
        self.lost = threading.Event()
        self.lost_reason = ""
        self._tag: str | None = None
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_beats = 0

    def _doc(self, *, released: bool = False) -> bytes:
        return LeaseRecord(self.run_id, self.driver_id, socket.gethostname(), os.getpid(), self.started_at,
                           time.time(), self.ttl_s, self.generation, released).to_bytes()

    @property
    def fence(self) -> Fence:
        """What this driver's commits are checked against in the store."""
        return Fence(self.generation, self.ttl_s)

    def _resume_hint(self) -> str:
        return f"`tessera-pipeline {self.command} --store {self.backend.url} --takeover`"

    def acquire(self) -> LeaseRecord | None:
        """Take the lease (the next generation), or raise LeaseHeldError saying who holds it, until when, and
        what to run; returns the lease replaced, if a driver held it."""
        current = read_lease(self.backend)
        url = self.backend.url
        replaced: LeaseRecord | None = None
        if current is not None and not current.record.released:
            gone = pid_is_gone(current)
            if current.live() and not (gone and self.takeover):
                if gone:
                    raise LeaseHeldError(f"{url} is in use by {current.describe()}, but that process is gone from this "
                                         f"host, so its driver is dead: pass --takeover to take the store over now "
                                         f"({self._resume_hint()})")
                raise LeaseHeldError(
                    f"{url} is in use by {current.describe()}: one driver per store. The lease lapses in "
                    f"{current.expires_in_s():.0f} s unless that driver renews it: if it is dead, run "
                    f"{self._resume_hint()} after that; if it is alive, wait for it or stop it "
                    f"(`tessera-pipeline status --store {url}` shows it)")
            if not self.takeover:
                raise LeaseHeldError(f"{url} was in use by {current.describe()}; its lease has lapsed, so that "
                                     f"driver is probably dead: pass --takeover ({self._resume_hint()})")
            replaced = current.record
        self.generation = (current.record.generation if current is not None else 0) + 1
        data = self._doc()
        started = time.monotonic()
        if not self.backend.put_if(LEASE_KEY, data, tag=None if current is None else current.tag):
            now = read_lease(self.backend)
            who = now.describe() if now else "another driver"
            raise LeaseHeldError(f"{url} was just taken by {who}")
        self._tag = self._own_tag(data)
        self._renewed_at = started
        if replaced is not None:
            log.warning("took over %s from %s (generation %d -> %d)", url, current.describe() if current else "?",
                        replaced.generation, self.generation)
        return replaced

    def _own_tag(self, data: bytes) -> str | None:
        found = self.backend.get_tagged(LEASE_KEY)
        if found is None or found[0] != data:
            return None
        return found[1]

    def _still_mine(self, lease: StoredLease | None) -> bool:
        return lease is not None and lease.record.driver_id == self.driver_id and \
            lease.record.generation == self.generation and not lease.record.released

    def beat(self) -> bool:
        """Renew the lease; False (and `lost` set) only when another driver holds it now or it stayed
        unrenewed past `max_unrenewed_s`. A refusal whose re-read still names this driver (its previous
        renewal landed but the answer was lost) is no takeover: renewal goes on with the tag read."""
        if self.lost.is_set():
            return False
        started = time.monotonic()
        data = self._doc()
        try:
            ok = self._tag is not None and self.backend.put_if(LEASE_KEY, data, tag=self._tag)
            if not ok:
                holder = read_lease(self.backend)
                if not self._still_mine(holder):
                    return self._deposed(holder)
                assert holder is not None
                ok = self.backend.put_if(LEASE_KEY, data, tag=holder.tag)
                if not ok:
                    return True  # it changed again meanwhile: judge it at the next beat
            self._tag = self._own_tag(data) or self._tag
        except Exception as exc:  # the store is unreachable from here (or only its writes are): keep trying, soon
            self.failed_beats += 1
            log.warning("lease heartbeat failed (%d in a row, last renewed %.0f s ago): %s", self.failed_beats,
                        self.unrenewed_s(), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if self._taken_meanwhile():
                return False
            if self.unrenewed_s() > self.max_unrenewed_s:
                return self._give_up(f"the lease on {self.backend.url} could not be renewed for "
                                     f"{self.unrenewed_s():.0f} s")
            return True
        self._renewed_at = started
        if self.failed_beats:
            log.warning("lease renewed again after %d failed heartbeat(s)", self.failed_beats)
        self.failed_beats = 0
        return True

    def _taken_meanwhile(self) -> bool:
        """After a failed renewal: True (and `lost` set) when a read shows another driver holds the lease now."""
        try:
            holder = read_lease(self.backend)
        except Exception:  # reads fail too: nothing is known, keep trying
            return False
        if holder is not None and not self._still_mine(holder) and holder.record.generation > self.generation:
            self._deposed(holder)
            return True
        return False

    def _deposed(self, holder: StoredLease | None) -> bool:
        who = holder.describe() if holder else "nobody (the lease was deleted)"
        return self._give_up(f"the lease on {self.backend.url} was taken over; it is now held by {who}")

    def _give_up(self, reason: str) -> bool:
        self.lost_reason = (f"{reason}: this driver stopped; its commits are refused by the store. Run "
                            f"{self._resume_hint()} to go on")
        self.lost.set()
        log.error("%s", self.lost_reason)
        return False

    def deposed_by_store(self, message: str) -> None:
        """A worker's commit was refused under a newer generation: another driver holds the store."""
        holder = None
        try:
            holder = read_lease(self.backend)
        except Exception as exc:  # the worker's word is enough: its commit was refused by the store
            log.debug("lease re-read after a fenced commit failed: %s", exc)
        if holder is not None and self._still_mine(holder):
            return
        if self.lost.is_set():
            return
        if holder is not None:
            self._deposed(holder)
        else:
            self._give_up(message)

    def unrenewed_s(self) -> float:
        """Seconds since the last renewal the store confirmed (measured from before it was sent)."""
        return time.monotonic() - self._renewed_at

    def may_dispatch(self) -> bool:
        """True while the lease was renewed within half its TTL: new tiles go out only then."""
        return not self.lost.is_set() and self.unrenewed_s() < self.ttl_s / 2.0

    def start_heartbeat(self) -> None:
        """Beat every third of the TTL (every twelfth while renewals fail) in a background thread until `release`."""

        def loop() -> None:
            while not self._stop.wait(self.ttl_s / (12.0 if self.failed_beats else 3.0)):
                if not self.beat():
                    return

        self._thread = threading.Thread(target=loop, name="tessera-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLostError once this driver no longer holds the store (the driver loop calls this every round)."""
        if self.lost.is_set():
            raise LeaseLostError(self.lost_reason)

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released if it is still ours (the generation is kept)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost.is_set() or self._tag is None:
            return
        try:
            current = read_lease(self.backend)
            if self._still_mine(current):
                assert current is not None
                self.backend.put_if(LEASE_KEY, self._doc(released=True), tag=current.tag)
        except Exception as exc:  # the lease then simply lapses
            log.warning("could not release the lease on %s (it lapses in %.0f s): %s", self.backend.url,
                        self.ttl_s, str(exc).splitlines()[0])
