"""`status --map` at global scale: the status map of a 1.6 M-tile run timed beside plain `status` over the same
store, each in a fresh process, alternately; and the maps of that run and of a county-sized one, for docs/.

The global store is a run of every land tile, its first `complete` planned tiles (the largest, so nearest the
equator) committed and the next 2,000 failed; the county's tiles are part complete, part failed for two
reasons, the rest pending. Run: python -m tessera_pipeline.bench.map_bench [--repeat 3] [--png docs/]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tessera_pipeline.bench.scale_bench import YEAR, _fill_local, _global_plan, _peak_rss_mb, _store_contents

GLOBE_PNG, COUNTY_PNG = "status-map-globe.png", "status-map-county.png"
#: The county: Greater Manchester's box.
COUNTY_BBOX = (-2.75, 53.35, -1.95, 53.65)


def measure(store: str, png: str) -> dict[str, Any]:
    """`status` (no `png`) or `status --map png`'s work in this process: seconds and peak RSS."""
    from tessera_pipeline.run.status import run_status
    from tessera_pipeline.run.status_map import draw_run_map

    t0 = time.perf_counter()
    st = run_status(store, with_tiles=bool(png))
    if png:
        draw_run_map(st, png)
    return {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _in_child(store: Path, png: str) -> dict[str, Any]:
    """`measure` in a fresh interpreter (imports and the land mask's first read included)."""
    code = ("import json, sys; from tessera_pipeline.bench.map_bench import measure; "
            "print(json.dumps(measure(sys.argv[1], sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(store), png], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _county_store(root: Path) -> None:
    """A county run: a third of its tiles complete, six failed (two reasons), the rest pending."""
    from tessera_pipeline import landmask, region
    from tessera_pipeline.run.workplan import plan_tiles

    plan = plan_tiles(region.select_bbox(COUNTY_BBOX, landmask.load_landmask("globe")), YEAR)
    contents = _store_contents(plan, "run", len(plan) // 3)
    failures = sorted(k for k in contents.objects if k.startswith("_run/failures/"))
    for key in failures[6:]:
        del contents.objects[key]
    for key in failures[:2]:
        doc = {**json.loads(contents.objects[key]), "reason": "bad-input:CorruptArrayError"}
        contents.objects[key] = json.dumps(doc).encode()
    _fill_local(root, contents)


def bench_status_map(complete: int = 500_000, repeat: int = 3, png_dir: Path | None = None) -> dict[str, Any]:
    """Seconds and peak RSS of `status` and `status --map` over the global store, alternately, `repeat` times each;
    with `png_dir`, the globe's and the county's maps are written there."""
    plan = _global_plan(1_598_651)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store.zarr"
        _fill_local(root, _store_contents(plan, "run", complete))
        runs: dict[str, list[dict[str, Any]]] = {"status": [], "status --map": []}
        for _ in range(repeat):
            runs["status"].append(_in_child(root, ""))
            runs["status --map"].append(_in_child(root, str(Path(tmp) / "map.png")))
        if png_dir is not None:
            measure(str(root), str(png_dir / GLOBE_PNG))
            _county_store(Path(tmp) / "county.zarr")
            measure(str(Path(tmp) / "county.zarr"), str(png_dir / COUNTY_PNG))
    return {"tiles": len(plan), "complete": complete, **{k: v for k, v in runs.items()}}


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--complete", type=int, default=500_000)
    parser.add_argument("--png", type=Path, default=None, help="folder for the globe's and the county's maps")
    args = parser.parse_args()
    print(json.dumps(bench_status_map(args.complete, args.repeat, args.png), indent=1))


if __name__ == "__main__":
    main()
