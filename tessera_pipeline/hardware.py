"""Hardware detection: what this process runs on (its hardware class), and thread pinning.

How each class computes is the precision policy's table (`tessera_pipeline.precision`). AMX CPUs
scale best at about 8 pinned physical cores per process, so `physical_cores` lists one logical CPU
per core for pinning.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
import torch

from tessera_pipeline.precision import Precision, class_defaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardwareInfo:
    """What a worker runs on: a short `kind` label for provenance and routing, and CPU features."""

    kind: str
    device: str
    cpu_model: str
    cpu_flags: frozenset[str]
    logical_cpus: int
    physical_cores: tuple[int, ...]
    gpu_name: str | None = None
    gpu_capability: tuple[int, int] | None = None

    @property
    def has_amx_bf16(self) -> bool:
        """Intel AMX tiles with bf16 (Sapphire Rapids and later)."""
        return "amx_bf16" in self.cpu_flags

    @property
    def has_avx512_bf16(self) -> bool:
        """AVX512-BF16 dot products (Cooper Lake, Sapphire Rapids, AMD Zen 4/5)."""
        return "avx512_bf16" in self.cpu_flags


def _cpu_flags_and_model() -> tuple[frozenset[str], str]:
    flags: set[str] = set()
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model in ("", "unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
    except OSError:
        log.debug("no /proc/cpuinfo; CPU features unknown")
    return frozenset(flags), model


def physical_cores(allowed: set[int] | None = None) -> tuple[int, ...]:
    """One logical CPU per physical core (the first sibling), within this process's affinity."""
    allowed = allowed if allowed is not None else set(os.sched_getaffinity(0))
    chosen: dict[str, int] = {}
    for cpu in sorted(allowed):
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        key = siblings.read_text().strip() if siblings.exists() else str(cpu)
        chosen.setdefault(key, cpu)
    return tuple(sorted(chosen.values()))


def gpu_class(device_name: str) -> str:
    """A GPU's hardware class from its CUDA device name: "NVIDIA H200" -> "cuda-H200", "Tesla T4" -> "cuda-T4"."""
    return "cuda-" + device_name.replace("NVIDIA ", "").replace("Tesla ", "").split()[0]


@lru_cache(maxsize=1)
def detect(device: str = "auto") -> HardwareInfo:
    """Describe the hardware a worker would use for `device` ("auto", "cpu" or "cuda[:n]")."""
    flags, model = _cpu_flags_and_model()
    cores = physical_cores()
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        index = torch.device(device if device.startswith("cuda") else "cuda").index or 0
        name = torch.cuda.get_device_name(index)
        cap = torch.cuda.get_device_capability(index)
        return HardwareInfo(gpu_class(name), f"cuda:{index}", model, flags, os.cpu_count() or 1, cores, name, cap)
    if "amx_bf16" in flags:
        kind = "cpu-amx"
    elif "avx512_bf16" in flags:
        kind = "cpu-avx512bf16"
    elif "avx512f" in flags:
        kind = "cpu-avx512"
    else:
        kind = f"cpu-{platform.machine()}"
    return HardwareInfo(kind, "cpu", model, flags, os.cpu_count() or 1, cores)


def default_precision(hw: HardwareInfo) -> Precision:
    """The precision policy's choice for this hardware's class (`precision.class_defaults`)."""
    return class_defaults(hw.kind, hw.gpu_capability).precision


def configure_threads(threads: int | None, *, pin: bool = False) -> int:
    """Set torch's intra-op threads (default: physical cores); optionally pin to physical cores."""
    cores = physical_cores()
    n = threads or len(cores) or 1
    if pin and cores:
        os.sched_setaffinity(0, set(cores[:n]))
    torch.set_num_threads(n)
    return n


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@lru_cache(maxsize=1)
def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Let glibc reuse freed large blocks instead of returning them to the kernel (process-wide).

    A pack's activations are tens of MB per GEMM output. By default glibc serves blocks over 32 MB
    with a fresh mmap, so every GEMM first page-faults its whole output: measured here, that cut
    oneDNN bf16 GEMMs from ~710 to ~480 GFLOP/s. Raising the mmap and trim thresholds keeps freed
    blocks in the heap; the process keeps its high-water mark (a few hundred MB) instead.
    Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False
    log.debug("glibc malloc: mmap threshold %d, trim threshold %d (%s)", mmap_threshold, trim_threshold, ok)
    return ok
