"""Pack-size sweep on a GPU: a steady bf16 tile per batch size, the whole tile resident (run by scripts/gpu_check.sh).

usage: python3 scripts/gpu_sweep.py WORKDIR SIZE   (WORKDIR holds bench's random checkpoint and synthetic tile)
"""

from __future__ import annotations

import sys
import time

import torch

from tessera_pipeline.encode.setup import build_encoder
from tessera_pipeline.inputs.dpixel import open_tile


def main(work: str, size: str) -> None:
    tile = open_tile(f"{work}/synthetic_{size}_seed0")
    for batch in (2048, 4096, 8192):
        encoder, _ = build_encoder(f"{work}/random_v1_1.pt", precision="bf16", device="cuda", batch_size=batch, device_budget=None)
        encoder.encode(tile)
        t0 = time.perf_counter()
        encoded = encoder.encode(tile)
        seconds = time.perf_counter() - t0
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
        print(f"batch {batch}, whole tile resident: {seconds:.2f} s, {encoded.stats.flops / seconds / 1e12:.0f} TFLOP/s, "
              f"peak {peak_gb:.1f} GB, triton kernels {encoder.triton_kernels}", flush=True)
        encoder.close()
        del encoder, encoded
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
