"""Checkpoints in upstream's formats load strictly, from a path, s3:// or https://; bad ones fail by name."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch

from tessera_pipeline.errors import CheckpointError
from tessera_pipeline.model import build_model, load_model, v1_0_config, v1_1_config
from tessera_pipeline.model.checkpoint import sha256_file


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_real_size_models_have_published_parameter_counts() -> None:
    assert n_params(build_model(v1_1_config())) == 57_708_738
    assert n_params(build_model(v1_0_config())) == 45_828_226


def upstream_state(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A state dict as upstream training saves it: wrapper prefixes and training-only heads included."""
    state = {f"{prefix}{k}": v.clone() for k, v in model.state_dict().items()}
    state[f"{prefix}projector.0.weight"] = torch.randn(8, 4)
    state[f"{prefix}projector.1.num_batches_tracked"] = torch.tensor(3)
    return state


def forward(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s2 = torch.randn(3, 16, 11, generator=g)
    s1 = torch.randn(3, 8, 3, generator=g)
    s2[..., -1] = torch.arange(1, 17).float()
    s1[..., -1] = torch.arange(5, 13).float()
    with torch.inference_mode():
        return model(s2, s1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "version,key,prefix",
    [("v1.1", "model_state", "_orig_mod."), ("v1.0", "model_state_dict", "module._orig_mod.")],
)
def test_real_size_upstream_checkpoint_round_trips(tmp_path: Path, version: str, key: str, prefix: str) -> None:
    torch.manual_seed(1)
    model = build_model(v1_1_config() if version == "v1.1" else v1_0_config())
    path = tmp_path / "ckpt.pt"
    payload = {key: upstream_state(model, prefix), "epoch": 7}
    if version == "v1.1":
        payload["config"] = {"s2_num_heads": 4, "s1_num_heads": 4, "data_source": "aws"}
    torch.save(payload, path)
    loaded = load_model(str(path))
    assert loaded.config.version == version
    assert n_params(loaded.model) == n_params(model)
    assert loaded.checkpoint_sha256 == sha256_file(path)
    assert torch.equal(forward(loaded.model), forward(model))


def small_checkpoint(tmp_path: Path, mutate: dict[str, torch.Tensor | None] | None = None) -> Path:
    """A small v1.1 checkpoint; `mutate` replaces (tensor) or removes (None) keys."""
    torch.manual_seed(2)
    model = build_model(v1_1_config(latent_dim=8, n_layers=1, d_ff=16))
    state = dict(model.state_dict())
    for k, v in (mutate or {}).items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    path = tmp_path / "small.pt"
    torch.save({"model_state": state, "config": {"s2_num_heads": 4, "s1_num_heads": 4}}, path)
    return path


def test_small_checkpoint_dimensions_come_from_the_tensors(tmp_path: Path) -> None:
    cfg = load_model(str(small_checkpoint(tmp_path))).config
    assert (cfg.s2.d_model, cfg.s2.n_layers, cfg.s2.d_ff, cfg.s2.n_heads) == (32, 1, 16, 4)
    assert cfg.reducer == (64, 128, 8) and cfg.saved_dims == 8


def test_missing_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    key = "s1_backbone.attn_pool.temporal_context.gru_cell.b_z"
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(str(small_checkpoint(tmp_path, {key: None})))


def test_misshapen_key_is_an_error_that_names_it(tmp_path: Path) -> None:
    key = "s2_backbone.transformer_encoder.layers.0.linear1.bias"
    with pytest.raises(CheckpointError, match=r"linear1\.bias has shape \(17,\)"):
        load_model(str(small_checkpoint(tmp_path, {key: torch.zeros(17)})))


def test_unexpected_model_key_is_an_error(tmp_path: Path) -> None:
    key = "s2_backbone.attn_pool.temporal_context.weight_ih_l0"
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_model(str(small_checkpoint(tmp_path, {key: torch.zeros(3)})))


def test_wrong_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a v1.1 checkpoint"):
        load_model(str(small_checkpoint(tmp_path)), version="v1.0")


def test_pickled_extras_need_explicit_trust(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model(v1_1_config(latent_dim=8, n_layers=1, d_ff=16))
    path = tmp_path / "pickled.pt"
    torch.save({"model_state": model.state_dict(), "config": {"s2_num_heads": 4}, "args": Path("/x")}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(str(path))
    assert load_model(str(path), trust_pickle=True).config.version == "v1.1"


def test_not_a_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip or pickle")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(str(path))


def test_checkpoint_from_s3(tmp_path: Path, new_bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    path = small_checkpoint(tmp_path)
    bucket = new_bucket("ckpt")
    boto3.client("s3").upload_file(str(path), bucket, "models/small.pt")
    loaded = load_model(f"s3://{bucket}/models/small.pt")
    assert loaded.checkpoint_sha256 == sha256_file(path)
    with pytest.raises(CheckpointError, match="download failed"):
        load_model(f"s3://{bucket}/models/absent.pt")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on loopback serving `tmp_path/www`."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_checkpoint_from_http(tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    root, url = http_root
    path = small_checkpoint(tmp_path)
    (root / "small.pt").write_bytes(path.read_bytes())
    assert load_model(f"{url}/small.pt").checkpoint_sha256 == sha256_file(path)
    with pytest.raises(CheckpointError, match="download failed"):
        load_model(f"{url}/absent.pt")


def test_flop_count_matches_the_reference_table() -> None:
    """tessera-model.md 1.6: 7.24 (v1.1) and 6.28 (v1.0) GFLOP per pixel at 68 tokens per stream."""
    from tessera_pipeline.model.flops import pixel_flops

    assert pixel_flops(v1_1_config(), 68, 68) / 1e9 == pytest.approx(7.24, abs=0.005)
    assert pixel_flops(v1_0_config(), 68, 68) / 1e9 == pytest.approx(6.28, abs=0.005)
    assert pixel_flops(v1_1_config(), 40, 40) / 1e9 == pytest.approx(4.23, abs=0.005)
