"""Direct evidence of an outage: the driver asks the store and the input root whether they answer.

A failure streak says nothing about its cause at the tail of a run or on a small cluster; a probe does.
`Prober` runs one probe at a time in a background thread (never blocking the scheduling loop): a GET of
the store's root object and a one-key listing of the input year. A probe that raises is the evidence
the scheduler needs to pause the run and refund the attempts the outage cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    """One probe: whether the store and the inputs answered, the failure named, and when it was asked."""

    ok: bool
    message: str
    asked_at: float


def probe_locations(store_url: str, input_root: str, year: int) -> None:
    """Raise when the store's root or the input root's year cannot be read (absent is fine: they answered)."""
    from tessera_pipeline.inputs.s3 import is_s3, s3_client, split_s3
    from tessera_pipeline.store.backend import open_backend

    open_backend(store_url).get("zarr.json")
    if is_s3(input_root):
        bucket, key = split_s3(input_root)
        s3_client().list_objects_v2(Bucket=bucket, Prefix=f"{key}/{year}/" if key else f"{year}/", MaxKeys=1)


class Prober:
    """Runs `check` in a background thread when asked, one probe at a time; the latest result is kept."""

    def __init__(self, check: Callable[[], None]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.latest: ProbeResult | None = None

    @property
    def running(self) -> bool:
        """True while a probe is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def request(self) -> None:
        """Start a probe unless one is in flight."""
        with self._lock:
            if self.running:
                return
            asked = time.monotonic()
            self._thread = threading.Thread(target=self._run, args=(asked,), name="tessera-probe", daemon=True)
            self._thread.start()

    def _run(self, asked: float) -> None:
        try:
            self._check()
            result = ProbeResult(True, "", asked)
        except Exception as exc:  # any failure to answer is the evidence sought
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result = ProbeResult(False, first, asked)
            log.warning("probe of the store and inputs failed: %s", first)
        with self._lock:
            self.latest = result
