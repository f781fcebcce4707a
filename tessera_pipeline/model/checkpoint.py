"""Load upstream-format Tessera checkpoints from a path, `s3://` or `https://` URL, strictly.

Accepts `{"model_state": ...}` (v1.1), `{"model_state_dict": ...}` (v1.0 QAT) or a bare state
dict; strips `_orig_mod.`, `module.` and `_fsdp_wrapped_module.`; drops training-only heads
(projector, matryoshka projector); takes every dimension from the tensors (heads from the
checkpoint's config when present, else upstream's 4). A missing, unexpected or misshapen key is a
`CheckpointError` naming it: never silently random weights (upstream v1.1 loads `strict=False`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tessera_pipeline.errors import CheckpointError
from tessera_pipeline.locations import is_s3, s3_client, split_s3
from tessera_pipeline.model.architecture import BackboneConfig, ModelConfig, ModelVersion, TesseraModel, build_model

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_fsdp_wrapped_module.")
MODEL_PREFIXES = ("s2_backbone.", "s1_backbone.", "dim_reducer.")
TRAINING_ONLY_PREFIXES = ("projector.", "segmented_matryoshka_projector.")
DEFAULT_HEADS = 4


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's model tensors (prefixes stripped), its config dict and identity."""

    source: str
    sha256: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass(frozen=True)
class LoadedModel:
    """A model with checkpoint weights loaded, ready for inference, and where it came from."""

    model: TesseraModel
    config: ModelConfig
    checkpoint_sha256: str
    source: str
    checkpoint_config: dict[str, Any] = field(default_factory=dict)


def _cache_dir() -> Path:
    root = os.environ.get("TESSERA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tessera-pipeline")
    path = Path(root) / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_checkpoint(source: str) -> Path:
    """Return a local path for `source`, downloading `s3://` and `http(s)://` URLs once into the cache."""
    if not source.startswith(("s3://", "http://", "https://")):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{source}: no such checkpoint file")
        return path
    target = _cache_dir() / hashlib.sha256(source.encode()).hexdigest()[:32]
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            if is_s3(source):
                bucket, key = split_s3(source)
                s3_client().download_fileobj(bucket, key, out)
            else:
                with urllib.request.urlopen(source, timeout=60) as resp:  # noqa: S310 - user-supplied URL by design
                    shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(tmp, target)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"{source}: download failed ({exc})") from exc
    return target


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file: the checkpoint's identity in provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def load_checkpoint(source: str, *, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint's state dict and config; pickled extras need `trust_pickle=True`."""
    path = fetch_checkpoint(source)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{source}: holds pickled objects beyond tensors; pass --trust-checkpoint only if you trust its origin ({exc})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{source}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected a dict, found {type(raw).__name__}")
    state = raw.get("model_state", raw.get("model_state_dict", raw))
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: model_state is a {type(state).__name__}, not a state dict")
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = _strip(key)
        if name.startswith(TRAINING_ONLY_PREFIXES):
            continue
        if not name.startswith(MODEL_PREFIXES):
            log.info("checkpoint %s: ignoring key %s", source, key)
            continue
        tensors[name] = value
    if not tensors:
        raise CheckpointError(f"{source}: no s2_backbone/s1_backbone/dim_reducer tensors found")
    return LoadedCheckpoint(source=source, sha256=sha256_file(path), state_dict=tensors, config=config)


def _require(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key}")
    return state[key]


def _backbone_config(state: dict[str, torch.Tensor], prefix: str, heads: int, source: str) -> BackboneConfig:
    emb = _require(state, f"{prefix}.embedding.0.weight", source)
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.transformer_encoder\.layers\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError(f"{source}: missing key {prefix}.transformer_encoder.layers.0.*")
    d_ff = _require(state, f"{prefix}.transformer_encoder.layers.0.linear1.weight", source).shape[0]
    d_model, bands = emb.shape
    if d_model % heads:
        raise CheckpointError(f"{source}: {prefix} width {d_model} is not divisible by {heads} heads")
    return BackboneConfig(bands=bands, d_model=d_model, n_layers=max(layer_ids) + 1, n_heads=heads, d_ff=d_ff)


def infer_config(ckpt: LoadedCheckpoint, version: ModelVersion | None = None) -> ModelConfig:
    """Derive the architecture from tensor shapes (heads from config); check it against `version`."""
    state, cfg, src = ckpt.state_dict, ckpt.config, ckpt.source
    s2_heads = int(cfg.get("s2_num_heads", cfg.get("nhead", DEFAULT_HEADS)))
    s1_heads = int(cfg.get("s1_num_heads", cfg.get("nhead", DEFAULT_HEADS)))
    s2 = _backbone_config(state, "s2_backbone", s2_heads, src)
    s1 = _backbone_config(state, "s1_backbone", s1_heads, src)
    first = _require(state, "dim_reducer.0.weight", src)
    if "dim_reducer.4.weight" in state:
        found: ModelVersion = "v1.1"
        reducer: tuple[int, ...] = (first.shape[1], first.shape[0], state["dim_reducer.4.weight"].shape[0])
    else:
        found = "v1.0"
        reducer = (first.shape[1], first.shape[0])
    if version is not None and version != found:
        raise CheckpointError(f"{src}: is a {found} checkpoint (dim_reducer layout), not {version}")
    saved = int(cfg.get("save_embedding_dim", 128))
    return ModelConfig(version=found, s2=s2, s1=s1, reducer=reducer, saved_dims=min(saved, reducer[-1]))


def load_model(source: str, *, version: ModelVersion | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Build the architecture the checkpoint describes and load its weights strictly."""
    ckpt = load_checkpoint(source, trust_pickle=trust_pickle)
    cfg = infer_config(ckpt, version)
    model = build_model(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]} ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]} ({len(unexpected)} unexpected in all)")
    for key, tensor in expected.items():
        got = ckpt.state_dict[key]
        if got.shape != tensor.shape:
            raise CheckpointError(f"{source}: key {key} has shape {tuple(got.shape)}, expected {tuple(tensor.shape)}")
    model.load_state_dict({k: v.float() for k, v in ckpt.state_dict.items()}, strict=True)
    model.requires_grad_(False)
    return LoadedModel(model=model, config=cfg, checkpoint_sha256=ckpt.sha256, source=source, checkpoint_config=ckpt.config)
