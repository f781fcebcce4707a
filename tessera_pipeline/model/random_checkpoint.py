"""Write RANDOM-weight checkpoints in upstream's format, for demos and tests (never real Tessera weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from tessera_pipeline.model.architecture import ModelConfig, ModelVersion, build_model, v1_0_config, v1_1_config


def save_random_checkpoint(
    path: Path, version: ModelVersion = "v1.1", *, seed: int = 0, data_source: str = "mpc", config: ModelConfig | None = None
) -> Path:
    """Save a model with seeded random weights as upstream does (`_orig_mod.` keys, config); real size by default.

    A smaller `config` (e.g. `v1_1_config(latent_dim=16, n_layers=1, d_ff=64)`) makes fast test checkpoints.
    """
    torch.manual_seed(seed)
    model = build_model(config or (v1_1_config() if version == "v1.1" else v1_0_config()))
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    payload: dict[str, object] = {"model_state": state} if version == "v1.1" else {"model_state_dict": state}
    if version == "v1.1":
        payload["config"] = {"s2_num_heads": 4, "s1_num_heads": 4, "data_source": data_source, "random_weights": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path
