"""Hardware classes and the precision policy per class: which pool a node's actors join and how they compute.

Classes are strings: `cuda-<Ray accelerator type>` for GPUs (`cuda-T4`, `cuda-L4`, `cuda-H100`, ...)
and the CPU kinds of `hardware.detect` (`cpu-amx`, `cpu-avx512bf16`, `cpu-avx512`, `cpu-x86_64`).
A node is classed by, in order: the custom resource `tessera_class:<class>` or the node label
`tessera/class` (set by deploy configs), Ray's `accelerator_type:<T>` resource or
`ray.io/accelerator-type` label with a GPU, else a probe of its CPU flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera_pipeline.run.config import NodeTypePolicy, PrecisionName, RunConfig

CLASS_RESOURCE_PREFIX = "tessera_class:"
CLASS_LABEL = "tessera/class"
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
#: GPUs with fp16 tensor cores but no fast bf16 (compute capability 7.x): fp16, which met the bf16
#: quality bar against fp32 (docs/benchmarks.md); bf16 autocast is slower than fp32 there.
FP16_GPUS = frozenset({"T4", "V100"})
#: GPUs without tensor cores: fp32.
FP32_GPUS = frozenset({"P100", "P4", "K80", "M60"})
CPU_BF16_CLASSES = frozenset({"cpu-amx", "cpu-avx512bf16"})
DEFAULT_CORES_PER_ACTOR = 8
CPU_BATCH = 256
GPU_BATCH = 2048


@dataclass(frozen=True)
class ClassPolicy:
    """How actors of one hardware class run: precision, pack size, cores, device."""

    hw_class: str
    precision: PrecisionName
    batch_size: int
    cores_per_actor: int
    device: str
    enabled: bool = True
    max_actors: int | None = None
    cpus_per_actor: float | None = None

    @property
    def is_gpu(self) -> bool:
        """True for `cuda-*` classes."""
        return self.hw_class.startswith("cuda-")

    @property
    def by_demand(self) -> bool:
        """True when the class's actors are asked of Ray by resource (autoscaler demand), not placed per node."""
        return bool(self.max_actors) and self.enabled

    @property
    def demand_cpus(self) -> float:
        """Logical CPUs one demand-placed actor asks of Ray."""
        if self.cpus_per_actor:
            return float(self.cpus_per_actor)
        return 1.0 if self.is_gpu else 2.0 * self.cores_per_actor


def builtin_policy(hw_class: str) -> ClassPolicy:
    """The built-in policy: T4/V100 fp16, older GPUs fp32, newer GPUs bf16, AMX/AVX512-BF16 CPUs bf16, other CPUs fp32."""
    if hw_class.startswith("cuda-"):
        gpu = hw_class[len("cuda-"):]
        precision: PrecisionName = "fp16" if gpu in FP16_GPUS else "fp32" if gpu in FP32_GPUS else "bf16"
        return ClassPolicy(hw_class, precision, GPU_BATCH, 0, "cuda")
    precision = "bf16" if hw_class in CPU_BF16_CLASSES else "fp32"
    return ClassPolicy(hw_class, precision, CPU_BATCH, DEFAULT_CORES_PER_ACTOR, "cpu")


def class_policy(hw_class: str, config: RunConfig) -> ClassPolicy:
    """The built-in policy with the run config's `node_types[hw_class]` overrides applied."""
    base = builtin_policy(hw_class)
    override: NodeTypePolicy | None = config.node_types.get(hw_class)
    if override is None:
        return base
    return ClassPolicy(
        hw_class=hw_class,
        precision=override.precision or base.precision,
        batch_size=override.batch_size or base.batch_size,
        cores_per_actor=override.cores_per_actor or base.cores_per_actor,
        device=override.device or base.device,
        enabled=override.enabled,
        max_actors=override.max_actors,
        cpus_per_actor=override.cpus_per_actor,
    )


def declared_class(resources: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """A node's class from its resources and labels, or None when only a CPU probe can tell."""
    for name in resources:
        if name.startswith(CLASS_RESOURCE_PREFIX):
            return name[len(CLASS_RESOURCE_PREFIX):]
    if labels.get(CLASS_LABEL):
        return str(labels[CLASS_LABEL])
    if float(resources.get("GPU", 0)) >= 1:
        for name in resources:
            if name.startswith(ACCELERATOR_RESOURCE_PREFIX):
                return f"cuda-{name[len(ACCELERATOR_RESOURCE_PREFIX):]}"
        if labels.get(ACCELERATOR_LABEL):
            return f"cuda-{labels[ACCELERATOR_LABEL]}"
        return "cuda-unknown"
    return None
