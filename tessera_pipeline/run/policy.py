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

from tessera_pipeline.precision import Precision, class_defaults
from tessera_pipeline.run.config import NodeTypePolicy, RunConfig

CLASS_RESOURCE_PREFIX = "tessera_class:"
CLASS_LABEL = "tessera/class"
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"
ACCELERATOR_LABEL = "ray.io/accelerator-type"


@dataclass(frozen=True)
class ClassPolicy:
    """How actors of one hardware class run: precision, pack size, cores, device."""

    hw_class: str
    precision: Precision
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
    """The class's row of the precision policy's table (`precision.class_defaults`) as a run policy."""
    d = class_defaults(hw_class)
    return ClassPolicy(hw_class, d.precision, d.batch_size, d.cores_per_actor, d.device)


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
