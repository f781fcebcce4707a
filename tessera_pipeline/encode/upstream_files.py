"""Upstream's per-tile output files, for drop-in compatibility with its downstream tools.

v1.1 writes `<name>_emb128_int8.npy` (int8 H,W,128) and `<name>_emb128_scales.npy` (float32 H,W);
v1.0 QAT writes `<name>.npy` and `<name>_scales.npy`. Files are written to a temporary name and
renamed, so a crash never leaves a truncated file under the final name (upstream's resume counts
files that exist).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tessera_pipeline.encode.encoder import EncodedTile
from tessera_pipeline.model.architecture import ModelVersion


def upstream_filenames(version: ModelVersion, name: str) -> tuple[str, str]:
    """(embeddings file, scales file) for a tile named `name`."""
    if version == "v1.1":
        return f"{name}_emb128_int8.npy", f"{name}_emb128_scales.npy"
    return f"{name}.npy", f"{name}_scales.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_upstream_files(encoded: EncodedTile, out_dir: Path, version: ModelVersion) -> tuple[Path, Path]:
    """Write an encoded tile under upstream's names in `out_dir`; returns the two paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    emb_name, scales_name = upstream_filenames(version, encoded.name)
    scales_path, emb_path = out_dir / scales_name, out_dir / emb_name
    _save_atomic(scales_path, encoded.scales)
    _save_atomic(emb_path, encoded.embeddings)
    return emb_path, scales_path
