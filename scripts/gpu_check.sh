#!/usr/bin/env bash
# One call on a GPU machine: the CUDA benchmark (ours vs upstream on a full-size 1126 x 690 tile, first
# tile in a fresh process and steady state, GEMM peaks, quality per precision), the CUDA tests, and a
# profile of a warm encode. Logs and the JSON report go to $OUT (default ./gpu-check-out).
#
# Needs: python3 with torch (CUDA build), numpy, click, rich, pytest. Missing pure dependencies of the
# encode path (pyproj, pydantic) can be carried as wheels in .whl/ (installed into /tmp/site here).
# Upstream's code is read from .rival/ (a copy of the rival repository; see docs/benchmarks.md).
# Also: the Triton kernels' tests first (a failure runs the bench with --no-triton-kernels), a pack-size sweep.
#   usage: scripts/gpu_check.sh [SIZE] [BENCH_TIMEOUT_S] [STAGES]   (STAGES: any of "fused bench tests sweep profile")
set -u
SIZE=${1:-1126x690}
BENCH_TIMEOUT=${2:-280}
STAGES=" ${3:-fused bench tests sweep profile} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
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

TRITON_FLAG=()
if want fused; then
stamp "Triton kernels on CUDA (tests/test_fused_kernels.py)"
timeout 100 python3 -m pytest -q -rs -p no:cacheprovider tests/test_fused_kernels.py > "$OUT/pytest_fused.txt" 2>&1
rc=$?
echo "fused-kernel tests exit $rc"
tail -n 8 "$OUT/pytest_fused.txt"
[ $rc -eq 0 ] || TRITON_FLAG=(--no-triton-kernels)
fi

if want bench; then
stamp "bench --device cuda --size $SIZE --upstream .rival --cuda-graphs ${TRITON_FLAG[*]}"
UPSTREAM=()
[ -d .rival ] && UPSTREAM=(--upstream .rival)
TRITON_CACHE_DIR="$WORK/triton-cache-bench" timeout "$BENCH_TIMEOUT" python3 -m tessera_pipeline.cli bench --device cuda --size "$SIZE" "${UPSTREAM[@]}" --cuda-graphs \
  "${TRITON_FLAG[@]}" --workdir "$WORK" --json > "$OUT/bench.json" 2> "$OUT/bench.log"
echo "bench exit $?"
cp "$WORK/report.json" "$OUT/report.json" 2>/dev/null
cp "$WORK/upstream.log" "$OUT/upstream.log" 2>/dev/null
tail -n 30 "$OUT/bench.log"
fi

if want tests; then
stamp "CUDA tests (and the measured CUDA peak of the largest land tile, tests/test_memory.py)"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_memory.py > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?"
tail -n 25 "$OUT/pytest.txt"
fi

if want sweep; then
stamp "pack-size sweep: a steady tile per batch size, the whole tile resident"
timeout 70 python3 scripts/gpu_sweep.py "$WORK" "$SIZE" > "$OUT/sweep.txt" 2>&1
echo "sweep exit $?"
tail -n 5 "$OUT/sweep.txt"
fi

if want profile; then
stamp "profile of a warm bf16 encode (256 x 256)"
timeout 40 python3 scripts/gpu_profile.py > "$OUT/profile.txt" 2>&1
echo "profile exit $?"
head -n 45 "$OUT/profile.txt"
fi

stamp "summary"
python3 - "$OUT/report.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
f, s = r["first_tile"], r["steady"]
print(r["device"], "peaks", {k: round(v["peak"], 1) for k, v in r["gemm_peak_tflops"].items()}, "datasheet", r.get("datasheet_peak_tflops"),
      "triton", r.get("triton_kernels"))
print(f"first tile: encode {f['encode_s']:.2f} s ({f['px_per_s']:.0f} px/s, {f['tflops']:.0f} TFLOP/s, MFU {f['mfu']:.2f}), "
      f"process {f['process_wall_s']:.2f} s")
print(f"steady: {s['seconds']:.2f} s ({s['px_per_s']:.0f} px/s, {s['tflops']:.0f} TFLOP/s, MFU {s['mfu']:.2f}, "
      f"datasheet {s.get('mfu_datasheet', float('nan')):.3f}), tiles {s['tile_seconds']}")
if "without_triton_kernels" in r:
    p = r["without_triton_kernels"]
    print(f"without Triton kernels: {p['tile_seconds']}, speedup {p['triton_speedup']:.3f}, vs plain {p['triton_vs_plain']}")
print("first/steady", round(r["first_over_steady_px_per_s"], 3))
if "cuda_graphs" in r:
    g = r["cuda_graphs"]
    print("graphs", g["tile_seconds"], round(g["steady"]["mfu"], 3), "same bytes", g["same_bytes_as_eager"])
if "upstream" in r:
    u = r["upstream"]
    print(f"upstream process {u['process_wall_s']:.1f} s, loop {u['encode_loop_s']}; steady/upstream {r['steady_over_upstream_process']:.2f}x",
          f"whole process ratio {r['first_process_over_upstream_process']:.2f}x",
          "ours vs upstream", u["ours_vs_upstream"])
for k, v in r.get("quality", {}).items():
    print("quality", k, v)
EOF
