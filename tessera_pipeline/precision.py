"""The precision policy: one table per hardware class (precision, pack size, cores per actor), used by encode, run and plan.

Evidence behind the table (docs/benchmarks.md, the seeds): NVIDIA GPUs of compute capability 8.0
and newer (A10, L4, L40S, A100, H100, H200) run bf16; T4 and V100 (no bf16, fp16 tensor cores) run
fp32, since upstream measured bf16 slower than fp32 on a T4 and fp16 has not been timed on one
(fp16 is a run-config option: `node_types: {cuda-T4: {precision: fp16}}`); GPUs without tensor
cores run fp32. CPUs with AMX-BF16 or AVX512-BF16 run bf16 autocast, in actors of 8 pinned
physical cores with packs of 256 pixels (the seeds' best); other CPUs run fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Compute precisions: float32, or bf16 / fp16 GEMM and attention inputs with float32 statistics.
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
#: NVIDIA GPUs that run fp32 by default: no bf16 (T4, V100: bf16 measured slower than fp32 on a T4) or no tensor cores.
FP32_GPUS = frozenset({"T4", "V100", "P100", "P4", "K80", "M60"})
#: CPU classes (`hardware.detect` kinds) whose bf16 autocast is fast.
CPU_BF16_CLASSES = frozenset({"cpu-amx", "cpu-avx512bf16"})
#: Default pack size (pixels of 64 tokens): CPU packs fit oneDNN's caches; GPU packs of ~131k tokens keep GEMMs large.
CPU_BATCH = 256
GPU_BATCH = 2048
#: Default device-memory budget of the accelerator path (bytes): a tile streams through the device in
#: blocks sized by `encode.memory.plan_memory` to stay within it. 6 GiB fits a 16 GB T4 next to the CUDA
#: context with margin (planned <= 6.44 GB for the largest land tile, 1140 x 1116, against 13.8-21.9 GB resident).
DEVICE_MEMORY_BUDGET = 6 * 2**30
#: The fp16 guard: a batch whose output (a pack's pooled vectors, a reduce slice's saved dims) is not finite
#: or beyond half of fp16's largest finite value (65,504) overflowed, and runs again in float32.
FP16_GUARD_LIMIT = 2.0**15
#: Physical cores per CPU actor (AMX scales best at about 8 pinned cores; hyperthreads hurt).
CPU_CORES_PER_ACTOR = 8


@dataclass(frozen=True)
class ClassDefaults:
    """The built-in policy of one hardware class: precision, pack size, device, and how many actors a node holds."""

    hw_class: str
    precision: Precision
    batch_size: int
    cores_per_actor: int
    device: str

    @property
    def is_gpu(self) -> bool:
        """True for `cuda-*` classes."""
        return self.hw_class.startswith("cuda-")

    def actors_per_node(self, physical_cores: int, gpus: int) -> int:
        """Actors `run` places on one node of this class: one per GPU, or one per `cores_per_actor` physical cores."""
        if self.is_gpu:
            return max(1, gpus)
        return max(1, physical_cores // (self.cores_per_actor or physical_cores or 1))


def class_defaults(hw_class: str, capability: tuple[int, int] | None = None) -> ClassDefaults:
    """The table's row for a class; `capability` (a GPU's compute capability) decides for a GPU the table does not name."""
    if hw_class.startswith("cuda-"):
        gpu = hw_class[len("cuda-"):]
        old = gpu in FP32_GPUS or (capability is not None and capability < (8, 0))
        return ClassDefaults(hw_class, "fp32" if old else "bf16", GPU_BATCH, 0, "cuda")
    precision: Precision = "bf16" if hw_class in CPU_BF16_CLASSES else "fp32"
    return ClassDefaults(hw_class, precision, CPU_BATCH, CPU_CORES_PER_ACTOR, "cpu")
