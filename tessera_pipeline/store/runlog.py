"""The run records kept inside an embedding store, so a run can be resumed and audited from the store alone.

Keys (relative to the store root, specified in docs/formats.md, section 7):

    _run/current.json                     {"run_id": ...}: the run `resume` and `status` pick by default
    _run/runs/{run_id}/run.json           the resolved run config, checkpoint identity, plan summary
    _run/runs/{run_id}/plan.tsv.gz        the planned tiles, largest first: "year<TAB>tile<TAB>pixels"
    _run/runs/{run_id}/progress.json      the driver's latest progress snapshot (throughput by class)
    _run/runs/{run_id}/awaiting.bits      planned tiles whose inputs did not exist yet, one bit per plan row
    _run/runs/{run_id}/commits/{writer}-{seq}.tsv  the run's commit log: "year<TAB>tile" lines, <= 1,000 a page
    _run/lease.json                       the driver holding the store (run/lease.py): one driver per store
    _run/failures/{year}/{tile}.json        a tile that failed permanently (bad input): only --retry-failed retries it
    _run/failures/{year}/{tile}.retry.json  a tile whose transient failures used up its attempts: resume retries it

Commit markers stay the only definition of "complete"; a failure record is deleted when its tile
is later committed, and any record whose tile has a marker is ignored by readers. The commit log
only says which run committed a marker (a reprocess's progress without a GET per marker); a
marker it does not mention is checked by reading the marker itself.
"""

from __future__ import annotations

import gzip
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tessera_pipeline.errors import StoreError
from tessera_pipeline.store import layout, listing
from tessera_pipeline.store.backend import Backend
from tessera_pipeline.store.records import FailureRecord, ProgressSnapshot, RunRecord

log = logging.getLogger(__name__)

RUN_PREFIX = "_run"
RUN_FORMAT = "tessera-run/1"
CURRENT_KEY = f"{RUN_PREFIX}/current.json"
FAILURES_PREFIX = f"{RUN_PREFIX}/failures"
#: Failure kinds and the suffix of their record keys (the kind is in the key so a listing tells it, no GETs).
FAILURE_SUFFIXES = {"permanent": ".json", "exhausted": ".retry.json"}
#: Entries per commit-log page: a global run's log is ~1,600 pages, read with one GET each.
COMMIT_LOG_PAGE = 1000


def new_run_id() -> str:
    """A sortable, unique run id: `rYYYYMMDDTHHMMSSZ-xxxxxx`."""
    return f"r{datetime.now(timezone.utc):%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:6]}"


def run_key(run_id: str, name: str) -> str:
    """Key of one object of a run's record."""
    return f"{RUN_PREFIX}/runs/{run_id}/{name}"


def commit_log_key(run_id: str, page: str) -> str:
    """Key of one page of a run's commit log (`page` is `{writer}-{seq:06d}`, unique per driver session)."""
    return run_key(run_id, f"commits/{page}.tsv")


def failure_key(year: int, tile: str, kind: str = "permanent") -> str:
    """Key of a tile's failure record of one kind (`permanent` or `exhausted`)."""
    return f"{FAILURES_PREFIX}/{layout.check_year(year)}/{layout.check_tile(tile)}{FAILURE_SUFFIXES[kind]}"


@dataclass(frozen=True)
class FailedTile:
    """A failure record as a listing shows it: the tile and the kind of failure."""

    year: int
    tile: str
    kind: str

    @property
    def key(self) -> tuple[int, str]:
        """(year, tile)."""
        return (self.year, self.tile)


@dataclass(frozen=True)
class PlannedTiles:
    """A run's tiles as parallel arrays, largest first (the order the driver schedules them in)."""

    years: np.ndarray
    tiles: list[str]
    pixels: np.ndarray

    def __len__(self) -> int:
        """Number of planned tiles."""
        return len(self.tiles)

    @property
    def total_pixels(self) -> int:
        """Pixels over all planned tiles."""
        return int(self.pixels.sum())


def encode_plan(plan: PlannedTiles) -> bytes:
    """The plan as gzipped tab-separated text (about 6 MB for the whole globe)."""
    body = "".join(f"{y}\t{t}\t{p}\n" for y, t, p in zip(plan.years.tolist(), plan.tiles, plan.pixels.tolist()))
    return gzip.compress(body.encode(), compresslevel=6, mtime=0)


def decode_plan(data: bytes) -> PlannedTiles:
    """Parse what `encode_plan` wrote."""
    text = gzip.decompress(data).decode()
    if not text:
        return PlannedTiles(np.zeros(0, np.int32), [], np.zeros(0, np.int64))
    fields = text.split()
    if len(fields) % 3:
        raise StoreError("unreadable run plan: expected year, tile and pixels on every line")
    return PlannedTiles(np.array(fields[0::3], dtype=np.int32), fields[1::3], np.array(fields[2::3], dtype=np.int64))


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False, default=str).encode()


class RunLog:
    """Reads and writes the run records of one store through its backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _json(self, key: str) -> dict[str, Any] | None:
        raw = self.backend.get(key)
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{self.backend.url}/{key}: unreadable run record ({exc})") from exc
        return doc

    # --- runs ----------------------------------------------------------------------------

    def save_run(self, run_id: str, record: dict[str, Any], plan: PlannedTiles) -> None:
        """Store a run's config and plan (plan first), then make it the current run."""
        self.backend.put_atomic(run_key(run_id, "plan.tsv.gz"), encode_plan(plan))
        doc = RunRecord.build(**{"format": RUN_FORMAT, "run_id": run_id, **record})
        self.backend.put_atomic(run_key(run_id, "run.json"), _dump(doc.document()))
        self.backend.put_atomic(CURRENT_KEY, _dump({"run_id": run_id}))

    def current_run_id(self) -> str | None:
        """The id of the run started last in this store, or None."""
        doc = self._json(CURRENT_KEY)
        return None if doc is None else str(doc["run_id"])

    def run_ids(self) -> list[str]:
        """Every run recorded in this store, oldest first."""
        return sorted(n for n in self.backend.list_children(f"{RUN_PREFIX}/runs") if n.startswith("r"))

    def load_run(self, run_id: str | None = None) -> dict[str, Any]:
        """A run's record (the current run by default); StoreError when there is none."""
        run_id = run_id or self.current_run_id()
        if run_id is None:
            root = getattr(self.backend, "root", None)
            if root is not None and not root.exists():
                raise StoreError(f"{self.backend.url} does not exist")
            if self.backend.get("zarr.json") is None:
                raise StoreError(f"{self.backend.url} holds no embedding store (no zarr.json, no run record)")
            raise StoreError(f"{self.backend.url} holds no run record: start one with `tessera-pipeline run`")
        doc = self._json(run_key(run_id, "run.json"))
        if doc is None:
            raise StoreError(f"{self.backend.url} has no run {run_id}")
        if doc.get("format") != RUN_FORMAT:
            raise StoreError(f"{self.backend.url}: run {run_id} has format {doc.get('format')!r}, not {RUN_FORMAT}")
        RunRecord.parse(doc, where=f"{self.backend.url}/{run_key(run_id, 'run.json')}")
        return doc

    def load_plan(self, run_id: str) -> PlannedTiles:
        """A run's planned tiles."""
        raw = self.backend.get(run_key(run_id, "plan.tsv.gz"))
        if raw is None:
            raise StoreError(f"{self.backend.url}: run {run_id} has no plan")
        return decode_plan(raw)

    def save_awaiting(self, run_id: str, awaiting: np.ndarray) -> None:
        """Record which planned tiles have no inputs yet (a bit per plan row: 200 KB for the globe, not a
        record per tile); an all-false mask removes the record."""
        key = run_key(run_id, "awaiting.bits")
        if not awaiting.any():
            self.backend.delete(key)
            return
        self.backend.put_atomic(key, np.packbits(awaiting.astype(bool)).tobytes())

    def load_awaiting(self, run_id: str, rows: int) -> np.ndarray:
        """The planned tiles recorded as awaiting their inputs (all false when none are)."""
        raw = self.backend.get(run_key(run_id, "awaiting.bits"))
        if raw is None:
            return np.zeros(rows, dtype=bool)
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=rows).astype(bool)

    def save_progress(self, run_id: str, snapshot: dict[str, Any]) -> None:
        """Replace the run's progress snapshot (checked against `ProgressSnapshot`)."""
        self.backend.put_atomic(run_key(run_id, "progress.json"), _dump(ProgressSnapshot.build(**snapshot).document()))

    def load_progress(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest progress snapshot, if the driver wrote one."""
        key = run_key(run_id, "progress.json")
        doc = self._json(key)
        if doc is not None:
            ProgressSnapshot.parse(doc, where=f"{self.backend.url}/{key}")
        return doc

    # --- commit log ----------------------------------------------------------------------

    def save_commit_page(self, run_id: str, page: str, entries: list[tuple[int, str]]) -> None:
        """Write (or rewrite, grown) one page of the run's commit log."""
        body = "".join(f"{year}\t{tile}\n" for year, tile in entries)
        self.backend.put_atomic(commit_log_key(run_id, page), body.encode())

    def committed_by(self, run_id: str) -> set[tuple[int, str]]:
        """The (year, tile) pairs this run's drivers logged as committed: one LIST plus one GET per page."""
        return set(self.committed_by_when(run_id))

    def committed_by_when(self, run_id: str) -> dict[tuple[int, str], float]:
        """The (year, tile) pairs this run's drivers logged as committed, each with the last-modified time (the
        store's clock) of the log page naming it: a marker modified later was rewritten since by someone else."""
        prefix = run_key(run_id, "commits/")
        pages = [(key, when) for key, when in self.backend.scan(prefix) if key.endswith(".tsv")]
        found: dict[tuple[int, str], float] = {}
        for (_key, when), raw in zip(pages, listing.parallel_map(self.backend.get, [k for k, _ in pages])):
            for line in (raw or b"").decode().splitlines():
                year, _, tile = line.partition("\t")
                if year.isdigit() and layout.is_tile(tile):
                    found[(int(year), tile)] = max(when, found.get((int(year), tile), when))
        return found

    # --- failures ------------------------------------------------------------------------

    def record_failure(self, year: int, tile: str, record: dict[str, Any]) -> None:
        """Write (or replace) a tile's failure record; `record["kind"]` is `permanent` (default) or `exhausted`."""
        kind = "exhausted" if record.get("kind") == "exhausted" else "permanent"
        doc = FailureRecord.build(**{"year": year, "tile": tile, "failed_at": datetime.now(timezone.utc).isoformat(),
                                     **record, "kind": kind})
        self.backend.put_atomic(failure_key(year, tile, kind), _dump(doc.document()))
        for other in FAILURE_SUFFIXES:
            if other != kind:
                self.backend.delete(failure_key(year, tile, other))

    def clear_failure(self, year: int, tile: str) -> None:
        """Delete a tile's failure records (after it was committed)."""
        for kind in FAILURE_SUFFIXES:
            self.backend.delete(failure_key(year, tile, kind))

    def failed_tiles(self, year: int | None = None) -> list[FailedTile]:
        """Every failure record with its kind, from one listing (no GETs)."""
        prefix = FAILURES_PREFIX if year is None else f"{FAILURES_PREFIX}/{layout.check_year(year)}"
        found: dict[tuple[int, str], FailedTile] = {}
        retry_suffix = FAILURE_SUFFIXES["exhausted"]
        for key, _ in self.backend.scan(f"{prefix}/"):
            parts = key.split("/")
            if len(parts) != 4 or not parts[2].isdigit() or not parts[3].endswith(".json"):
                continue
            name = parts[3]
            kind = "exhausted" if name.endswith(retry_suffix) else "permanent"
            tile = name[: -len(retry_suffix)] if kind == "exhausted" else name[: -len(".json")]
            if layout.is_tile(tile):
                entry = FailedTile(int(parts[2]), tile, kind)
                found.setdefault(entry.key, entry)
        return sorted(found.values(), key=lambda f: f.key)

    def failure_docs(self, failures: list[FailedTile]) -> list[dict[str, Any]]:
        """The records of these failures, read side by side (an absent one, cleared meanwhile, is {})."""
        return listing.parallel_map(lambda f: self.failure(f.year, f.tile, f.kind) or {}, failures)

    def failure(self, year: int, tile: str, kind: str | None = None) -> dict[str, Any] | None:
        """A tile's failure record (of `kind`, or whichever exists), or None."""
        for k in ([kind] if kind else list(FAILURE_SUFFIXES)):
            key = failure_key(year, tile, k)
            doc = self._json(key)
            if doc is not None:
                FailureRecord.parse(doc, where=f"{self.backend.url}/{key}")
                return doc
        return None
