"""Whole-store commands and the scheduling loop at global scale (issue figures for docs/benchmarks.md).

- `status`, `resume`'s planning and a reprocess's `status` over stores holding 10^5-10^6 commit
  markers, on a local disk and on a loopback S3 server (moto) that counts every request it answers
  (LIST, GET, other); each command runs in a fresh process so its peak RSS is its own.
- The driver's scheduling loop over a 1.6 M-tile plan with 1,000 simulated actor slots: the real
  `Scheduler` with an in-process pool whose actors answer at once, so what is timed is the driver's
  own work per tile (dispatch, results, records, progress), not Ray's or the model's.

Stores are populated directly (files on disk, objects in moto's memory): setup is not what is measured.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

YEAR = 2024
SHA = "0" * 64
#: Failure records in every benchmark store (a real global run has thousands).
FAILED = 2_000
#: Markers a reprocess committed whose commit-log page never landed (the driver was killed): read one by one.
UNLOGGED = 100


@dataclass(frozen=True)
class CommandBench:
    """One whole-store command over one store: wall time, peak RSS of its process, requests by kind."""

    command: str
    backend: str
    tiles: int
    markers: int
    failed: int
    answer: dict[str, int]
    seconds: float
    peak_rss_mb: float
    requests: dict[str, int]


@dataclass(frozen=True)
class SchedulingBench:
    """The scheduling loop over a large plan with simulated actor slots answering at once."""

    tiles: int
    slots: int
    window: int
    seconds: float
    tiles_per_s: float
    peak_rss_mb: float


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the forking parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- stores ------------------------------------------------------------------------------


def _global_plan(tiles: int) -> Any:
    from tessera_pipeline import landmask, region
    from tessera_pipeline.run.workplan import plan_tiles, subset

    plan = plan_tiles(region.select_global(landmask.load_landmask("globe")), YEAR)
    if tiles > len(plan):
        raise ValueError(f"the globe has {len(plan):,} land tiles; asked for {tiles:,}")
    return subset(plan, np.arange(len(plan)) < tiles)


def _marker_doc(tile: str, committed_at: str) -> bytes:
    from tessera_pipeline.store import layout

    return json.dumps({"format": layout.COMMIT_FORMAT, "tile": tile, "year": YEAR, "committed_at": committed_at,
                       "provenance": {"checkpoint_sha256": SHA}}).encode()


@dataclass(frozen=True)
class _Layout:
    """What a benchmark store holds: keys and bodies, with the marker times to set."""

    objects: dict[str, bytes]
    old: list[str]
    record: dict[str, Any]


def _store_contents(plan: Any, kind: str, complete: int) -> _Layout:
    """Markers for the first `complete` planned tiles (a reprocess: all old, then half rewritten by it, its
    commit log naming all but UNLOGGED of those), FAILED failure records, the run record and plan."""
    from tessera_pipeline.store import layout
    from tessera_pipeline.store.runlog import COMMIT_LOG_PAGE, commit_log_key, encode_plan, failure_key, run_key

    now = datetime.now(timezone.utc).isoformat()
    run_id = "r20261128T000000Z-bench0"
    names = plan.tiles
    objects: dict[str, bytes] = {}
    old: list[str] = []
    redone = names[: complete // 2] if kind == "reprocess" else []
    for i, name in enumerate(names[:complete]):
        key = layout.marker_key(YEAR, name)
        objects[key] = _marker_doc(name, now) if i < len(redone) else b"{}"
        if i >= len(redone):
            old.append(key)
    logged = redone[: max(0, len(redone) - UNLOGGED)]
    for page, start in enumerate(range(0, len(logged), COMMIT_LOG_PAGE)):
        body = "".join(f"{YEAR}\t{t}\n" for t in logged[start:start + COMMIT_LOG_PAGE])
        objects[commit_log_key(run_id, f"bench0000-{page:06d}")] = body.encode()
    for name in names[complete:complete + FAILED]:
        doc = {"year": YEAR, "tile": name, "reason": "bad-input:MissingFileError", "kind": "permanent",
               "message": "bench"}
        objects[failure_key(YEAR, name)] = json.dumps(doc).encode()
    record = {"format": "tessera-run/1", "run_id": run_id, "kind": kind, "created_at": now, "config": {},
              "checkpoint": {"sha256": SHA}}
    objects[run_key(run_id, "plan.tsv.gz")] = encode_plan(plan)
    objects[run_key(run_id, "run.json")] = json.dumps(record).encode()
    objects["_run/current.json"] = json.dumps({"run_id": run_id}).encode()
    return _Layout(objects, old, record)


def _fill_local(root: Path, contents: _Layout) -> None:
    """Write the objects as files; old markers get an mtime a day back (written before the reprocess)."""
    made: set[Path] = set()
    for key, body in contents.objects.items():
        path = root / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        if body == b"{}":
            os.mknod(path)
        else:
            path.write_bytes(body)
    day_ago = time.time() - 86_400
    for key in contents.old:
        os.utime(root / key, (day_ago, day_ago))


def _fill_moto(bucket: str, prefix: str, contents: _Layout) -> None:
    """Put the objects straight into the in-process moto server's memory (old markers dated a day back)."""
    from datetime import timedelta

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(bucket, "us-east-1")
    for key, body in contents.objects.items():
        backend.put_object(bucket, f"{prefix}/{key}", body)
    day_ago = datetime.now(timezone.utc) - timedelta(days=1)
    for key in contents.old:
        backend.get_object(bucket, f"{prefix}/{key}").last_modified = day_ago


# --- a counting S3 server ----------------------------------------------------------------


class _Counts:
    """Requests the server answered, by kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: Counter[str] = Counter()

    def add(self, environ: dict[str, Any]) -> None:
        method, query, path = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", ""), environ.get("PATH_INFO", "")
        bucket_only = path.strip("/").count("/") == 0
        kind = ("LIST" if method == "GET" and (bucket_only or "list-type" in query) else
                "GET" if method == "GET" else "HEAD" if method == "HEAD" else "other")
        with self.lock:
            self.by_kind[kind] += 1

    def take(self) -> dict[str, int]:
        with self.lock:
            taken = dict(self.by_kind)
            self.by_kind.clear()
        return taken


@contextmanager
def counting_s3() -> Iterator[tuple[str, _Counts]]:
    """moto's S3 server on loopback behind a WSGI layer that counts each request; yields (endpoint, counts)."""
    import logging

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    counts = _Counts()
    app = DomainDispatcherApplication(create_backend_app)

    def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        counts.add(environ)
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counted, True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        thread.join()


# --- the commands, each in its own process ----------------------------------------------


def measure_command(command: str, store: str) -> dict[str, Any]:
    """Run one command's store work in this process: seconds, peak RSS and its answer."""
    t0 = time.perf_counter()
    if command == "manifest":
        from tessera_pipeline.store import TileStore
        from tessera_pipeline.store.manifest import build_manifest

        built = build_manifest(TileStore(store))
        answer = {"tiles": len(built), "left_out": len(built.left_out), "parquet_bytes": len(built.to_parquet())}
    elif command == "resume":
        from tessera_pipeline.run.session import resume_split
        from tessera_pipeline.store import TileStore
        from tessera_pipeline.store.runlog import RunLog

        tiles = TileStore(store)
        runlog = RunLog(tiles.backend)
        record = runlog.load_run()
        plan = runlog.load_plan(record["run_id"])
        split, _ = resume_split(tiles, runlog, record, plan)
        answer = {"complete": split.complete, "failed": split.failed, "todo": len(split.todo)}
    else:
        from tessera_pipeline.run.status import run_status

        st = run_status(store)
        answer = {"complete": st.complete, "failed": st.failed, "pending": st.pending}
    return {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1), "answer": answer}


def _manifest_marker(name: str, version: str, now: str) -> bytes:
    """A full-size commit marker as `write_tile` writes it (indent 1, sorted keys, run provenance)."""
    from tessera_pipeline.grid import tile_geometry
    from tessera_pipeline.store import layout

    geo = tile_geometry(name)
    path = layout.version_key(YEAR, name, version)
    shape = [geo.height, geo.width, 128]
    prov = {"checkpoint_sha256": SHA, "checkpoint_source": "tessera_v1_1_mpc_encoder.pt", "model_version": "v1.1",
            "pipeline_version": "0.1.0", "data_source": "mpc", "precision": "bf16", "device_kind": "cuda:NVIDIA L4",
            "hardware_class": "gpu-l4", "input_fingerprint": SHA, "timings": {"encode_s": 40.1, "prepare_s": 3.2}}
    marker = {"format": layout.COMMIT_FORMAT, "year": YEAR, "tile": name, "version": version, "path": path,
              "committed_at": now, "epsg": geo.epsg, "transform": list(geo.transform), "shape": shape,
              "checksum_algorithm": "sha256",
              "arrays": {layout.EMBEDDINGS: {"dtype": "int8", "shape": shape, "sha256": SHA},
                         layout.SCALES: {"dtype": "float32", "shape": shape[:2], "sha256": SHA}},
              "provenance": prov, "store_write_s": 1.1}
    return json.dumps(marker, indent=1, sort_keys=True).encode()


def _manifest_contents(tiles: int) -> _Layout:
    """A store of `tiles` committed tiles: root, full-size markers, and the objects each version must hold (empty)."""
    from tessera_pipeline.store import layout, root_attributes

    now = datetime.now(timezone.utc).isoformat()
    version = layout.new_version()
    model = {"model_version": "v1.1", "checkpoint_sha256": SHA, "data_source": "mpc"}
    objects: dict[str, bytes] = {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group",
                                                          "attributes": root_attributes(model)}).encode()}
    for name in _global_plan(tiles).tiles:
        objects[layout.marker_key(YEAR, name)] = _manifest_marker(name, version, now)
        path = layout.version_key(YEAR, name, version)
        objects.update({f"{path}/{o}": b"{}" for o in layout.VERSION_OBJECTS})
    return _Layout(objects, [], {})


def bench_manifest_local(tiles: int = 100_000, keep: Path | None = None) -> CommandBench:
    """`manifest` (rows built and encoded as GeoParquet) over a local store of `tiles` committed tiles.

    `keep`: build the store in this folder and leave it there; a store already there is reused as it is.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = (keep or Path(tmp)) / "store.zarr"
        if not (root / "zarr.json").exists():
            _fill_local(root, _manifest_contents(tiles))
        r = _in_child("manifest", str(root))
    return CommandBench("manifest", "local", tiles, tiles, 0, r["answer"], r["seconds"], r["peak_rss_mb"], {})


def _in_child(command: str, store: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    code = ("import json, sys; from tessera_pipeline.bench.scale_bench import measure_command; "
            "print(json.dumps(measure_command(sys.argv[1], sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, command, store], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{command} on {store} failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_commands_local(tiles: int, kinds: tuple[str, ...] = ("run", "reprocess")) -> list[CommandBench]:
    """status and resume planning of a plain run, and status of a reprocess, over a local store."""
    plan = _global_plan(tiles)
    complete = int(tiles * 0.9)
    found: list[CommandBench] = []
    for kind in kinds:
        contents = _store_contents(plan, kind, complete)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "store.zarr"
            _fill_local(root, contents)
            for command in (("status", "resume") if kind == "run" else ("status",)):
                r = _in_child(command, str(root))
                name = command if kind == "run" else f"reprocess {command}"
                found.append(CommandBench(name, "local", tiles, complete, FAILED, r["answer"], r["seconds"],
                                          r["peak_rss_mb"], {}))
            del contents
    return found


def bench_commands_s3(tiles: int, kinds: tuple[str, ...] = ("run", "reprocess")) -> list[CommandBench]:
    """The same over a loopback S3 server that counts LIST and GET requests."""
    plan = _global_plan(tiles)
    complete = int(tiles * 0.9)
    found: list[CommandBench] = []
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    with counting_s3() as (endpoint, counts):
        for n, kind in enumerate(kinds):
            bucket = f"bench{n}"
            _fill_moto(bucket, "store.zarr", _store_contents(plan, kind, complete))
            for command in (("status", "resume") if kind == "run" else ("status",)):
                counts.take()
                r = _in_child(command, f"s3://{bucket}/store.zarr", {**env, "AWS_ENDPOINT_URL": endpoint})
                name = command if kind == "run" else f"reprocess {command}"
                found.append(CommandBench(name, "s3", tiles, complete, FAILED, r["answer"], r["seconds"],
                                          r["peak_rss_mb"], counts.take()))
    return found


# --- the scheduling loop ----------------------------------------------------------------


class _InstantActors:
    """A pool of simulated actor slots that answer every tile at once (the scheduler's own cost is timed)."""

    def __init__(self, slots: int, policy: Any, spec: Any) -> None:
        from tessera_pipeline.run.actors import ActorSlot

        self.answers: dict[int, Any] = {}
        self.next_ref = 0
        self.slots = [ActorSlot(f"a{i}", f"n{i // 8}", policy, spec, _Handle(self, f"a{i}"), None, state="ready",
                                threads=1) for i in range(slots)]
        self.quarantined = 0
        self.given_up: dict[str, Any] = {}
        self.checkpoint_loads: list[int] = []
        self.last_death = ""

    def submit(self, slot_key: str, req: Any) -> int:
        from tessera_pipeline.run.messages import TileResult

        self.next_ref += 1
        self.answers[self.next_ref] = TileResult(req.year, req.tile, True, "cpu-bench", "n", slot_key, "fp32",
                                                 pixels=1_000_000, encode_s=0.0)
        return self.next_ref

    def wait(self, refs: list[Any], timeout_s: float) -> list[Any]:
        return refs

    def result(self, ref: Any) -> Any:
        return self.answers.pop(ref)

    def refresh(self, *, force: bool = False) -> list[Any]:
        return []

    def poll_ready(self) -> None:
        return None

    def live(self) -> list[Any]:
        return self.slots

    def ready(self) -> list[Any]:
        return self.slots

    def gave_up_everywhere(self) -> bool:
        return False


class _Handle:
    """`handle.process.remote(req)` for a simulated actor."""

    def __init__(self, pool: _InstantActors, key: str) -> None:
        self.process, self.pool, self.key = self, pool, key

    def remote(self, req: Any) -> int:
        return self.pool.submit(self.key, req)


def measure_scheduling(tiles: int, slots: int, window: int) -> dict[str, Any]:
    """The real Scheduler over `tiles` planned tiles and `slots` instant actors, records into a local store."""
    from tessera_pipeline.run.config import build_config
    from tessera_pipeline.run.messages import WorkerSpec
    from tessera_pipeline.run.policy import class_policy
    from tessera_pipeline.run.progress import RecordWriter
    from tessera_pipeline.run.scheduler import Scheduler
    from tessera_pipeline.store.backend import LocalBackend
    from tessera_pipeline.store.runlog import RunLog

    plan = _global_plan(tiles)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config({"input": "in", "store": str(Path(tmp) / "s.zarr"), "checkpoint": "c.pt",
                               "year": YEAR, "window": window, "progress_every_s": 5.0})
        spec = WorkerSpec("", "", "fp32", 1, "cpu", (), 1, config.store, "in", "c.pt", SHA)
        pool = _InstantActors(slots, class_policy("cpu-x86_64", config), spec)
        records = RecordWriter(RunLog(LocalBackend(Path(tmp) / "s.zarr")), "rbench")
        scheduler = Scheduler(run_id="rbench", todo=plan, already_complete=0, pool=pool,  # type: ignore[arg-type]
                              records=records, known_failures=set(), config=config)
        t0 = time.perf_counter()
        outcome = scheduler.run()
        seconds = time.perf_counter() - t0
        records.flush(60.0)
    done = outcome.progress.complete
    return {"tiles": done, "seconds": round(seconds, 2), "tiles_per_s": round(done / seconds, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def bench_scheduling(tiles: int = 1_598_651, slots: int = 1000, window: int = 2) -> SchedulingBench:
    """`measure_scheduling` in a fresh process (its peak RSS is the loop's own)."""
    code = ("import json, sys; from tessera_pipeline.bench.scale_bench import measure_scheduling; "
            "print(json.dumps(measure_scheduling(*map(int, sys.argv[1:]))))")
    out = subprocess.run([sys.executable, "-c", code, str(tiles), str(slots), str(window)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scheduling benchmark failed: {out.stderr.strip().splitlines()[-1:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return SchedulingBench(r["tiles"], slots, window, r["seconds"], r["tiles_per_s"], r["peak_rss_mb"])


def run_scale(local_tiles: tuple[int, ...] = (100_000, 1_000_000), s3_tiles: int = 100_000,
              schedule_tiles: int = 1_598_651) -> dict[str, Any]:
    """Every scale figure, as one JSON-ready dict."""
    commands = [c for n in local_tiles for c in bench_commands_local(n)]
    if s3_tiles:
        commands += bench_commands_s3(s3_tiles)
    return {"commands": [asdict(c) for c in commands],
            "scheduling": asdict(bench_scheduling(schedule_tiles)) if schedule_tiles else None}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Whole-store benchmarks run alone (docs/benchmarks.md).")
    parser.add_argument("--manifest", type=int, default=100_000, help="committed tiles of the manifest's store")
    parser.add_argument("--keep", type=Path, default=None, help="build the store in this folder and keep it")
    args = parser.parse_args()
    print(json.dumps(asdict(bench_manifest_local(args.manifest, args.keep)), indent=1))
