"""`bench --calibrate`: measure this machine the way `run`'s actors use it and write a measured `plan` profile.

One actor is timed as `run` runs it: the settings `run`'s actors build (`encode.setup.encode_settings`:
the precision policy's precision and pack size for this class, packed kernels on a CPU, the
fixed-shape engine on an accelerator), the class's cores per actor, a real-size random-weight model
built once and warmed up as `build_encoder` warms it, then synthetic tiles encoded and committed to a
fresh local store. The machine's seconds per tile are that actor's seconds divided by the actors the
machine holds (`ClassDefaults.actors_per_node`), so a profile calibrated on an 8-core slice
describes the whole machine. Start-up (a fresh process importing the encoder, loading a shipped
checkpoint and warming up, plus a new shape's first encode) is recorded apart from the per-tile
time; the encoder's fixed seconds per tile (the intercept of the timed tiles, 8 x 8 and the
calibration size, each new to the encoder as a run's tiles are) and the per-tile work around the encode (opening and validating the tile's input
files, and the store commit) apart from the seconds per pixel, so `plan` predicts a run of small
tiles, where they are not negligible, as well as one of full tiles.
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

import numpy as np
import torch

from tessera_pipeline import __version__
from tessera_pipeline.plan.profiles import Profile, Timing, dump_profiles, load_profiles
from tessera_pipeline.precision import class_defaults

if TYPE_CHECKING:
    from tessera_pipeline.encode import TileEncoder
    from tessera_pipeline.inputs.tile import DPixelTile

log = logging.getLogger(__name__)

#: The small tile timed beside the calibration tile, to separate fixed per-tile seconds from per-pixel ones.
SMALL = (8, 8)
#: Timed passes of the per-tile input-and-commit work, after one untimed pass.
IO_REPEATS = 3
#: The timed tiles are drawn with seeds no earlier encode used: every tile of a run is new to the encoder, and a
#: pack of a length mix not seen before can need new kernels (oneDNN builds a primitive per GEMM shape), which an
#: encode of the warm-up tile again would not pay. Two tiles are timed at the calibration size: the seconds per
#: observation differ by up to ~10 % between tiles of one size (their mix of sequence lengths), and the profile
#: keeps their mean.
TIMED_SEEDS = (2, 3)


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
    """Time one actor on synthetic tiles per model and precision; a profile for this whole machine.

    A tile of the calibration size is encoded once first: a new shape's first encode pays a one-time
    warm-up (kernel selection, oneDNN primitives, CUDA autotuning) that a long-lived `run` actor pays
    once, with its first tile; what that encode took beyond the steady ones is counted in the start-up.
    The steady seconds are the mean over `TIMED_SEEDS` tiles the encoder has not seen, as a run's are.

    Precisions default to the run policy's for this hardware class. Prices default to 0 (free: the
    machine at hand); pass the real hourly price to compare it with cloud profiles. `pin` pins this
    process to the physical cores it times, as `run` pins its CPU actors.
    """
    from tessera_pipeline.bench.encoder_bench import random_model
    from tessera_pipeline.encode import TileEncoder
    from tessera_pipeline.encode.setup import encode_settings
    from tessera_pipeline.hardware import configure_threads, detect

    say = on_progress or log.info
    hw = detect()
    policy = class_defaults(hw.kind, hw.gpu_capability)
    physical = len(hw.physical_cores) or 1
    cores = min(policy.cores_per_actor or physical, physical)
    gpus = torch.cuda.device_count() if policy.is_gpu else 0
    actors = policy.actors_per_node(physical, gpus)
    if hw.device == "cpu":
        configure_threads(threads or cores, pin=pin)
    batch = batch_size or policy.batch_size
    wanted = list(precisions) if precisions else [policy.precision]
    height, width = size
    timings: list[Timing] = []
    startup_s = warm_s = 0.0
    for model in models:
        t0 = time.perf_counter()
        loaded = random_model(model)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        for precision in wanted:
            settings = encode_settings(hw, precision=precision, batch_size=batch)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            encoder = TileEncoder(loaded, settings)
            encoder.warm_up()
            _timed_encode(encoder, SMALL, hw.device, seed=0)
            startup_s = max(startup_s, build_s + time.perf_counter() - t0)
            say(f"calibrating {model} {precision}: {height}x{width} tile, batch {batch}, {settings.kernels} kernels, "
                f"{torch.get_num_threads()} threads")
            first_s = _timed_encode(encoder, (height, width), hw.device, seed=1)[0] if (height, width) != SMALL else 0.0
            small = _timed_encode(encoder, SMALL, hw.device, seed=TIMED_SEEDS[0]) if (height, width) != SMALL else None
            timed = [_timed_encode(encoder, (height, width), hw.device, seed=seed) for seed in TIMED_SEEDS]
            seconds, pixels = float(np.mean([t for t, _ in timed])), height * width
            small_s, small_px = (small[0], small[1].n_pixels) if small else (seconds, pixels)
            warm_s = max(warm_s, first_s - seconds)
            fixed = _fixed_seconds(small_s, small_px, seconds, pixels)
            tokens = float(np.mean([tokens_per_pixel(tile) for _, tile in timed]))
            say(f"{model} {precision}: {seconds:.2f} s for {pixels} px ({fixed:.2f} s of it fixed per tile), "
                f"{1e3 * (seconds - fixed) / pixels:.3f} ms/pixel per actor")
            timings.append(
                Timing(
                    model=model,  # type: ignore[arg-type]
                    precision=precision,  # type: ignore[arg-type]
                    seconds=seconds / actors,
                    pixels=pixels,
                    fixed_s=fixed / actors,
                    tokens_per_pixel=tokens,
                    source=f"bench --calibrate, {dt.date.today().isoformat()}, random weights, synthetic {height}x{width} tile, "
                           f"{settings.kernels} kernels, batch {batch}",
                )
            )
    say("calibrating an actor's start: a fresh process loading a checkpoint file")
    first_model = next(iter(models), "v1.1")
    startup_s = max(startup_s - build_s, 0.0) + warm_s + actor_start_seconds(
        first_model, wanted[0], hw.device, threads=torch.get_num_threads() if hw.device == "cpu" else None)
    say("calibrating the work around one tile's encode: opening its inputs and the store commit")
    overhead = tile_io_seconds(height, width)
    host = platform.node() or "this-machine"
    return Profile(
        name=name or f"calibrated-{hw.kind}-{host}",
        machine=machine or hw.gpu_name or hw.cpu_model,
        hw_class=hw.kind,
        description=f"calibrated here: {hw.gpu_name or hw.cpu_model}, {physical} physical cores, {actors} actor(s)",
        usd_per_hour=usd_per_hour if usd_per_hour is not None else 0.0,
        usd_per_hour_spot=usd_per_hour_spot,
        price_source="given to bench --calibrate" if usd_per_hour is not None else "none given: 0",
        basis="measured",
        startup_s=startup_s,
        tile_overhead_s=overhead / actors,
        overhead_source=f"bench --calibrate, {dt.date.today().isoformat()}: start-up = a fresh process loading a shipped "
                        "checkpoint and warming up, plus the new shapes' first encodes (8 x 8, and the calibration tile's "
                        f"{warm_s:.2f} s beyond its steady encode); per tile = opening and validating "
                        "the tile's input files and committing it to a local store",
        measured_on={
            "host": host,
            "cpu_model": hw.cpu_model,
            "gpu": hw.gpu_name or "",
            "device": hw.device,
            "physical_cores": str(physical),
            "threads_per_actor": str(torch.get_num_threads()) if hw.device == "cpu" else "",
            "actors": str(actors),
            "batch_size": str(batch),
            "kernels": encode_settings(hw).kernels,
            "torch": torch.__version__,
            "tessera_pipeline": __version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        timings=timings,
    )


def actor_start_seconds(model: str, precision: str, device: str, *, threads: int | None = None) -> float:
    """Wall seconds for a fresh Python process to import the encoder, receive a real-size checkpoint (a copy of its
    bytes, as a `run` actor writes what the driver ships) and build the encoder as `run`'s actors do (pinned to
    `threads` physical cores on a CPU, then load and warm-up): what every actor pays once before its first tile
    (Ray starts its worker processes, Ray imported, before the run; that is not counted). The faster of two
    starts: a run's driver has just read the same packages from disk, so its actors never start on a cold file cache."""
    import subprocess
    import sys

    from tessera_pipeline.model.random_checkpoint import save_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="calibrate-ckpt-") as tmp:
        path = save_random_checkpoint(Path(tmp) / "random.pt", model)  # type: ignore[arg-type]
        copy = Path(tmp) / "shipped.pt"
        pin = f"from tessera_pipeline.hardware import configure_threads; configure_threads({threads}, pin=True); " if threads else ""
        code = (f"import pathlib; {pin}from tessera_pipeline.encode.setup import build_encoder; "
                f"pathlib.Path({str(copy)!r}).write_bytes(pathlib.Path({str(path)!r}).read_bytes()); "
                f"build_encoder({str(copy)!r}, precision={precision!r}, device={device!r})")
        starts = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
            starts.append(time.perf_counter() - t0)
        return min(starts)


def tile_io_seconds(height: int, width: int) -> float:
    """Wall seconds an actor spends on one tile besides encoding it: opening and validating its d-pixel files
    (as `run`'s workers open them) and writing and committing a realistic tile of this size into a fresh local store.
    The median of a few passes after an untimed one, which pays one-time imports a run's actor pays before its first tile."""
    from tessera_pipeline.bench.store_bench import EPSG, MODEL_ATTRS, TILE, TRANSFORM, YEAR, realistic_tile
    from tessera_pipeline.inputs.dpixel import georeference_for, open_tile_at
    from tessera_pipeline.inputs.synthetic import make_synthetic_tile
    from tessera_pipeline.store import TileStore

    embeddings, scales = realistic_tile(height, width)
    with tempfile.TemporaryDirectory(prefix="calibrate-io-") as tmp:
        make_synthetic_tile(Path(tmp) / "inputs", YEAR, TILE, size=(height, width))
        store = TileStore(str(Path(tmp) / "store"))
        store.create(MODEL_ATTRS)
        seconds = []
        for _ in range(IO_REPEATS + 1):
            t0 = time.perf_counter()
            tile = open_tile_at(str(Path(tmp) / "inputs"), YEAR, TILE)
            georeference_for(tile, TILE)
            store.write_tile(YEAR, TILE, embeddings, scales, epsg=EPSG, transform=TRANSFORM, provenance={})
            seconds.append(time.perf_counter() - t0)
        return float(np.median(seconds[1:]))


def tokens_per_pixel(tile: DPixelTile) -> float:
    """Mean valid S2 plus S1 observations per pixel of a tile (time is linear in them): `plan --tokens-per-pixel`."""
    s1 = sum(int((np.asarray(a) != 0).any(axis=-1).sum()) for a in (tile.sar_ascending, tile.sar_descending))
    return float(int((np.asarray(tile.masks) != 0).sum()) + s1) / tile.n_pixels


def _timed_encode(encoder: TileEncoder, size: tuple[int, int], device: str, *, seed: int) -> tuple[float, DPixelTile]:
    """Wall seconds to encode one synthetic tile of `size` drawn with `seed`, and the tile."""
    from tessera_pipeline.bench.encoder_bench import synthetic_tile

    tile = synthetic_tile(*size, seed=seed)
    t0 = time.perf_counter()
    encoder.encode(tile)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tile


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
