"""Profile of a warm bf16 encode of a 256 x 256 synthetic tile on a GPU, by kernel (run by scripts/gpu_check.sh)."""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from tessera_pipeline.bench.encoder_bench import random_model, synthetic_tile
from tessera_pipeline.encode import EncodeSettings, TileEncoder


def main() -> None:
    encoder = TileEncoder(random_model("v1.1"), EncodeSettings(device="cuda:0", precision="bf16", kernels="fixed", batch_size=2048))
    encoder.warm_up()
    tile = synthetic_tile(256, 256, seed=2)
    encoder.encode(tile)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        encoder.encode(tile)
    print("triton kernels", encoder.triton_kernels)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))


if __name__ == "__main__":
    main()
