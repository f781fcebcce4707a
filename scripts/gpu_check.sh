#!/usr/bin/env bash
# One call on a GPU machine: the CUDA benchmark (ours vs upstream on a full-size 1126 x 690 tile, first
# tile in a fresh process and steady state, GEMM peaks, quality per precision), the CUDA tests, and a
# profile of a warm encode. Logs and the JSON report go to $OUT (default ./gpu-check-out).
#
# Needs: python3 with torch (CUDA build), numpy, click, rich, pytest. Missing pure dependencies of the
# encode path (pyproj, pydantic) can be carried as wheels in .whl/ (installed into /tmp/site here).
# Upstream's code is read from .rival/ (a copy of the rival repository; see docs/benchmarks.md).
#   usage: scripts/gpu_check.sh [SIZE] [BENCH_TIMEOUT_S]
set -u
SIZE=${1:-1126x690}
BENCH_TIMEOUT=${2:-330}
OUT=${OUT:-$PWD/gpu-check-out}
WORK=${WORK:-/tmp/tessera-gpu-check}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
stamp() { echo "[$(( $(date +%s) - START )) s] $*"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stamp "bench --device cuda --size $SIZE --upstream .rival --cuda-graphs"
UPSTREAM=()
[ -d .rival ] && UPSTREAM=(--upstream .rival)
timeout "$BENCH_TIMEOUT" python3 -m tessera_pipeline.cli bench --device cuda --size "$SIZE" "${UPSTREAM[@]}" --cuda-graphs \
  --workdir "$WORK" --json > "$OUT/bench.json" 2> "$OUT/bench.log"
echo "bench exit $?"
cp "$WORK/report.json" "$OUT/report.json" 2>/dev/null
cp "$WORK/upstream.log" "$OUT/upstream.log" 2>/dev/null
tail -n 30 "$OUT/bench.log"

stamp "CUDA tests"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?"
tail -n 25 "$OUT/pytest.txt"

stamp "profile of a warm bf16 encode (256 x 256)"
timeout 60 python3 - > "$OUT/profile.txt" 2>&1 <<'EOF'
import torch
from torch.profiler import ProfilerActivity, profile
from tessera_pipeline.bench.encoder_bench import random_model, synthetic_tile
from tessera_pipeline.encode import EncodeSettings, TileEncoder
enc = TileEncoder(random_model("v1.1"), EncodeSettings(device="cuda:0", precision="bf16", kernels="fixed", batch_size=2048))
enc.warm_up()
tile = synthetic_tile(256, 256, seed=2)
enc.encode(tile)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    enc.encode(tile)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
EOF
echo "profile exit $?"
head -n 45 "$OUT/profile.txt"

stamp "summary"
python3 - "$OUT/report.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
f, s = r["first_tile"], r["steady"]
print(r["device"], "peaks", {k: round(v["peak"], 1) for k, v in r["gemm_peak_tflops"].items()})
print(f"first tile: encode {f['encode_s']:.2f} s ({f['px_per_s']:.0f} px/s, {f['tflops']:.0f} TFLOP/s, MFU {f['mfu']:.2f}), "
      f"process {f['process_wall_s']:.2f} s")
print(f"steady: {s['seconds']:.2f} s ({s['px_per_s']:.0f} px/s, {s['tflops']:.0f} TFLOP/s, MFU {s['mfu']:.2f}), tiles {s['tile_seconds']}")
print("first/steady", round(r["first_over_steady_px_per_s"], 3))
if "cuda_graphs" in r:
    g = r["cuda_graphs"]
    print("graphs", g["tile_seconds"], round(g["steady"]["mfu"], 3), "same bytes", g["same_bytes_as_eager"])
if "upstream" in r:
    u = r["upstream"]
    print(f"upstream process {u['process_wall_s']:.1f} s, loop {u['encode_loop_s']}; steady/upstream {r['steady_over_upstream_process']:.2f}x",
          "ours vs upstream", u["ours_vs_upstream"])
for k, v in r.get("quality", {}).items():
    print("quality", k, v)
EOF
