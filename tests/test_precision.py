"""One precision policy: a table per hardware class at the package's ground floor, used by encode, run and plan."""

from __future__ import annotations

import re
from pathlib import Path

import tessera_pipeline
from tessera_pipeline.encode.setup import encode_settings
from tessera_pipeline.hardware import HardwareInfo, default_precision
from tessera_pipeline.precision import class_defaults
from tessera_pipeline.run.policy import builtin_policy

CLASSES = ["cuda-T4", "cuda-V100", "cuda-L4", "cuda-A10", "cuda-H200", "cuda-P100", "cpu-amx", "cpu-avx512bf16",
           "cpu-avx512", "cpu-x86_64"]


def _hw(kind: str, capability: tuple[int, int] | None = None) -> HardwareInfo:
    device = "cuda:0" if kind.startswith("cuda-") else "cpu"
    return HardwareInfo(kind, device, "cpu", frozenset(), 16, tuple(range(16)), "GPU" if capability else None, capability)


def test_encode_run_and_hardware_follow_one_table() -> None:
    """For every class, the run's policy, hardware's default and the encoder's settings are the table's row."""
    for hw_class in CLASSES:
        row = class_defaults(hw_class)
        policy = builtin_policy(hw_class)
        assert (policy.precision, policy.batch_size, policy.cores_per_actor, policy.device) == (
            row.precision, row.batch_size, row.cores_per_actor, row.device), hw_class
        hw = _hw(hw_class, (7, 5) if hw_class in ("cuda-T4", "cuda-V100") else (9, 0) if hw_class.startswith("cuda-") else None)
        settings = encode_settings(hw)
        assert default_precision(hw) == settings.precision == row.precision, hw_class
        assert settings.batch_size == row.batch_size and settings.kernels == ("fixed" if row.is_gpu else "packed")


def test_the_table_keeps_t4_in_fp32_and_new_gpus_in_bf16() -> None:
    """T4 runs fp32 (upstream measured bf16 slower; fp16 is a run-config option); an unnamed pre-Ampere GPU fp32."""
    assert class_defaults("cuda-T4").precision == "fp32" and class_defaults("cuda-H100").precision == "bf16"
    assert class_defaults("cuda-Quadro", (7, 5)).precision == "fp32"
    assert class_defaults("cpu-amx").precision == "bf16" and class_defaults("cpu-x86_64").precision == "fp32"
    assert class_defaults("cpu-amx").actors_per_node(physical_cores=16, gpus=0) == 2
    assert class_defaults("cuda-L4").actors_per_node(physical_cores=16, gpus=4) == 4


def test_precision_names_and_default_batches_are_defined_once() -> None:
    """No module but precision.py spells the precision Literal or a default pack size table."""
    root = Path(tessera_pipeline.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "precision.py":
            continue
        text = path.read_text()
        assert not re.search(r'Literal\["fp32", "bf16", "fp16"\]', text), path
        assert not re.search(r'\{"cpu": 256, "cuda": 2048\}|GPU_BATCH = |CPU_BATCH = ', text), path
