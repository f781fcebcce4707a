"""The GPU benchmark's parts that run anywhere: its inputs, GEMM timing, upstream discovery, the report table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tessera_pipeline.bench import gpu_bench
from tessera_pipeline.cli.bench_gpu import print_report
from tessera_pipeline.cli.main import cli
from tessera_pipeline.inputs.dpixel import open_tile
from tessera_pipeline.inputs.synthetic import synthetic_arrays, write_synthetic_arrays

RIVAL = Path(__file__).resolve().parents[1] / ".rival"


def test_synthetic_tile_written_in_parallel_has_the_in_memory_bytes(tmp_path: Path) -> None:
    write_synthetic_arrays(tmp_path / "t", 37, 21, seed=5, workers=2)
    write_synthetic_arrays(tmp_path / "e", 5, 6, seed=5, n_s1_asc=0)
    tile = open_tile(tmp_path / "t")
    for key, value in synthetic_arrays(37, 21, seed=5).items():
        assert np.array_equal(getattr(tile, key), value), key
    assert open_tile(tmp_path / "e").sar_ascending.shape == (0, 5, 6, 2)


def test_gemm_peaks_report_every_dtype_and_shape_on_any_device() -> None:
    peaks = gpu_bench.gemm_peaks(torch.device("cpu"), seconds=0.01, shapes=((64, 32, 48),))
    assert set(peaks) == {"bf16", "fp16", "fp32", "tf32"}
    for figures in peaks.values():
        assert figures["peak"] == figures["64x32x48"] > 0


def test_upstream_script_is_found_and_its_timing_line_parsed(tmp_path: Path) -> None:
    script = tmp_path / "rival" / "tessera_infer_QAT" / "src" / "infer_v1_1.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    assert gpu_bench.find_upstream_script(tmp_path / "rival") == script
    assert gpu_bench.find_upstream_script(script) == script
    with pytest.raises(FileNotFoundError):
        gpu_bench.find_upstream_script(tmp_path / "rival" / "tessera_infer_QAT" / "configs")
    done = gpu_bench.UPSTREAM_DONE.search("2026 - INFO - Done. total_pixels=776940 elapsed=67.8s")
    assert done is not None and done.group(2) == "67.8"


def test_report_table_names_the_device_and_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    run = {"seconds": 14.6, "px_per_s": 53325.0, "tflops": 334.0, "mfu": 0.48}
    report = {
        "device": "NVIDIA H200", "capability": [9, 0], "torch": "2.11", "cuda": "13.0", "size": [1126, 690],
        "weights": "random", "precision": "bf16",
        "gemm_peak_tflops": {"bf16": {"peak": 700.7}, "fp32": {"peak": 51.0}},
        "first_tile": {**run, "encode_s": 15.0, "process_wall_s": 20.5, "px_per_s_whole_process": 37877.0},
        "steady": run, "cuda_graphs": {"steady": run},
        "upstream": {"process_wall_s": 75.9, "px_per_s_whole_process": 10233.0},
        "quality": {"size": [256, 256], "batch_size": 512, "fp32": {**run, "nonfinite_pixels": 0},
                    "fp16": {**run, "nonfinite_pixels": 0, "exact": 0.977, "exact_plus_1": 1.0, "off_by_2_plus": 0.0,
                             "cosine_min": 0.99997}},
    }
    print_report(report)
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "5.21x" in out and "upstream infer_v1_1.py" in out and "97.70%" in out


def test_bench_refuses_a_bad_device_and_cuda_without_a_gpu() -> None:
    bad = CliRunner().invoke(cli, ["bench", "--device", "gpu0"])
    assert bad.exit_code == 2 and "cuda:N" in bad.output
    if not torch.cuda.is_available():
        missing = CliRunner().invoke(cli, ["bench", "--device", "cuda"])
        assert missing.exit_code == 2 and "no CUDA device" in missing.output


@pytest.mark.skipif(not (RIVAL / "tessera_infer_QAT" / "src" / "infer_v1_1.py").is_file(),
                    reason="upstream's code is not copied into .rival/ (see docs/benchmarks.md)")
def test_rival_copy_has_its_config_next_to_the_script() -> None:
    script = gpu_bench.find_upstream_script(RIVAL)
    assert (script.parent.parent / "configs" / "v1_1_infer_config.py").is_file()


def test_datasheet_peak_is_found_by_the_cards_name() -> None:
    assert gpu_bench.datasheet_tflops("NVIDIA H200", "bf16") == 989
    assert gpu_bench.datasheet_tflops("Tesla T4", "fp16") == 65
    assert gpu_bench.datasheet_tflops("Tesla T4", "bf16") is None
    assert gpu_bench.datasheet_tflops("Some Future GPU", "bf16") is None
