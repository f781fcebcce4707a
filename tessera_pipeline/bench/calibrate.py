"""`bench --calibrate`: measure this machine the way `run`'s actors use it and write a `plan` profile.

One actor is timed as `run` would start it: the run policy's batch size and cores per actor for this
hardware class, a real-size random-weight model built once, a warm-up, then a synthetic tile
encoded and committed to a fresh local store. The machine's seconds per tile are that actor's
seconds divided by the actors the machine holds (physical cores / cores per actor on a CPU, GPUs
on a GPU machine), so a profile calibrated on an 8-core slice describes the whole machine.
Start-up (a fresh process loading a checkpoint file, plus the warm-up), the encoder's fixed seconds per tile (the intercept of two
timed tiles, 8 x 8 and the calibration size) and the store commit are recorded apart from the
seconds per pixel, so `plan` can predict a run of small tiles on this machine, where they are not
negligible, as well as one of full tiles.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tessera_pipeline import __version__
from tessera_pipeline.plan.profiles import Profile, Timing, dump_profiles, load_profiles

if TYPE_CHECKING:
    from tessera_pipeline.encode import TileEncoder

log = logging.getLogger(__name__)

#: The small tile timed beside the calibration tile, to separate fixed per-tile seconds from per-pixel ones.
SMALL = (8, 8)


def actors_per_machine(hw_class: str, cores_per_actor: int, physical_cores: int) -> int:
    """How many actors `run` puts on this machine: one per GPU, or one per `cores_per_actor` physical cores."""
    if hw_class.startswith("cuda-"):
        return max(1, torch.cuda.device_count())
    return max(1, physical_cores // cores_per_actor)


def calibrate(
    models: Iterable[str] = ("v1.1",),
    precisions: Iterable[str] | None = None,
    size: tuple[int, int] = (32, 32),
    *,
    name: str | None = None,
    machine: str | None = None,
    usd_per_hour: float | None = None,
    usd_per_hour_spot: float | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    pin: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> Profile:
    """Time one actor on a synthetic tile per model and precision; a profile for this whole machine.

    The calibration tile is encoded once untimed first: a new shape's first encode pays a one-time
    warm-up (kernel selection, oneDNN primitives, CUDA autotuning) that a long-lived `run` actor pays
    once, not per tile.

    Precisions default to the run policy's for this hardware class. Prices default to 0 (free: the
    machine at hand); pass the real hourly price to compare it with cloud profiles. `pin` pins this
    process to the physical cores it times, as `run` pins its CPU actors.
    """
    from tessera_pipeline.bench.encoder_bench import random_model
    from tessera_pipeline.encode import EncodeSettings, TileEncoder
    from tessera_pipeline.hardware import configure_threads, detect
    from tessera_pipeline.run.policy import builtin_policy

    say = on_progress or log.info
    hw = detect()
    policy = builtin_policy(hw.kind)
    physical = len(hw.physical_cores) or 1
    cores = min(policy.cores_per_actor or physical, physical)
    actors = actors_per_machine(hw.kind, policy.cores_per_actor or physical, physical)
    if hw.device == "cpu":
        configure_threads(threads or cores, pin=pin)
    batch = batch_size or policy.batch_size
    wanted = list(precisions) if precisions else [policy.precision]
    height, width = size
    timings: list[Timing] = []
    startup_s = 0.0
    for model in models:
        t0 = time.perf_counter()
        loaded = random_model(model)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        for precision in wanted:
            settings = EncodeSettings(
                precision=precision,  # type: ignore[arg-type]
                batch_size=batch,
                device=hw.device,
                kernels="packed" if hw.device == "cpu" else "module",
            )
            t0 = time.perf_counter()
            encoder = TileEncoder(loaded, settings)
            _timed_encode(encoder, SMALL, hw.device)
            startup_s = max(startup_s, build_s + time.perf_counter() - t0)
            say(f"calibrating {model} {precision}: {height}x{width} tile, batch {batch}, {torch.get_num_threads()} threads")
            if (height, width) != SMALL:
                _timed_encode(encoder, (height, width), hw.device)  # warm-up: new pack shapes pay it once
            small_s, small_px = _timed_encode(encoder, SMALL, hw.device)
            if (height, width) == SMALL:
                seconds, pixels = small_s, small_px
            else:
                seconds, pixels = _timed_encode(encoder, (height, width), hw.device)
            fixed = _fixed_seconds(small_s, small_px, seconds, pixels)
            say(f"{model} {precision}: {seconds:.2f} s for {pixels} px ({fixed:.2f} s of it fixed per tile), "
                f"{1e3 * (seconds - fixed) / pixels:.3f} ms/pixel per actor")
            timings.append(
                Timing(
                    model=model,  # type: ignore[arg-type]
                    precision=precision,  # type: ignore[arg-type]
                    seconds=seconds / actors,
                    pixels=pixels,
                    fixed_s=fixed / actors,
                    source=f"bench --calibrate, {dt.date.today().isoformat()}, random weights, synthetic {height}x{width} tile",
                )
            )
    say("calibrating an actor's start: a fresh process loading a checkpoint file")
    startup_s = max(startup_s - build_s, 0.0) + actor_start_seconds(next(iter(models), "v1.1"), wanted[0], hw.device)
    say("calibrating the store commit of one tile")
    overhead = store_commit_seconds(height, width)
    host = platform.node() or "this-machine"
    return Profile(
        name=name or f"calibrated-{hw.kind}-{host}",
        machine=machine or hw.gpu_name or hw.cpu_model,
        hw_class=hw.kind,
        description=f"calibrated here: {hw.gpu_name or hw.cpu_model}, {physical} physical cores, {actors} actor(s)",
        usd_per_hour=usd_per_hour if usd_per_hour is not None else 0.0,
        usd_per_hour_spot=usd_per_hour_spot,
        price_source="given to bench --calibrate" if usd_per_hour is not None else "none given: 0",
        startup_s=startup_s,
        tile_overhead_s=overhead / actors,
        measured_on={
            "host": host,
            "cpu_model": hw.cpu_model,
            "gpu": hw.gpu_name or "",
            "device": hw.device,
            "physical_cores": str(physical),
            "threads_per_actor": str(torch.get_num_threads()) if hw.device == "cpu" else "",
            "actors": str(actors),
            "batch_size": str(batch),
            "torch": torch.__version__,
            "tessera_pipeline": __version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        timings=timings,
    )


def actor_start_seconds(model: str, precision: str, device: str) -> float:
    """Wall seconds for a fresh Python process to import the encoder, receive a real-size checkpoint (a copy
    of its bytes, as a `run` actor writes what the driver ships) and load it: what every actor pays
    once before its first tile. The warm-up encode is timed separately."""
    import subprocess
    import sys

    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="calibrate-ckpt-") as tmp:
        path = save_random_checkpoint(Path(tmp) / "random.pt", model)  # type: ignore[arg-type]
        copy = Path(tmp) / "shipped.pt"
        code = ("import pathlib; from tessera_pipeline.encode.setup import build_encoder; "
                f"pathlib.Path({str(copy)!r}).write_bytes(pathlib.Path({str(path)!r}).read_bytes()); "
                f"build_encoder({str(copy)!r}, precision={precision!r}, device={device!r})")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
        return time.perf_counter() - t0


def store_commit_seconds(height: int, width: int) -> float:
    """Wall seconds to write and commit one realistic tile of this size into a fresh local store."""
    from tessera_pipeline.bench.store_bench import EPSG, MODEL_ATTRS, TILE, TRANSFORM, YEAR, realistic_tile
    from tessera_pipeline.store import TileStore

    embeddings, scales = realistic_tile(height, width)
    with tempfile.TemporaryDirectory(prefix="calibrate-store-") as tmp:
        store = TileStore(str(Path(tmp) / "store"))
        store.create(MODEL_ATTRS)
        t0 = time.perf_counter()
        store.write_tile(YEAR, TILE, embeddings, scales, epsg=EPSG, transform=TRANSFORM, provenance={})
        return time.perf_counter() - t0


def _timed_encode(encoder: TileEncoder, size: tuple[int, int], device: str) -> tuple[float, int]:
    """Wall seconds to encode one synthetic tile of `size`, and its pixels."""
    from tessera_pipeline.bench.encoder_bench import synthetic_tile

    tile = synthetic_tile(*size)
    t0 = time.perf_counter()
    encoder.encode(tile)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tile.n_pixels


def _fixed_seconds(small_s: float, small_px: int, big_s: float, big_px: int) -> float:
    """The per-tile intercept of a line through two timed tiles, kept within [0, 90 % of the big tile]."""
    if big_px <= small_px:
        return 0.0
    slope = (big_s - small_s) / (big_px - small_px)
    if slope <= 0:
        return 0.0
    return min(max(small_s - slope * small_px, 0.0), 0.9 * big_s)


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write `profile` into a profiles file, keeping its other profiles and this one's other timings."""
    path = Path(path)
    profiles = load_profiles(path) if path.exists() else []
    merged: list[Profile] = []
    for existing in profiles:
        if existing.name != profile.name:
            merged.append(existing)
            continue
        fresh = {(t.model, t.precision) for t in profile.timings}
        kept = [t for t in existing.timings if (t.model, t.precision) not in fresh]
        profile = profile.model_copy(update={"timings": kept + list(profile.timings)})
    merged.append(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_profiles(merged))
    return path
