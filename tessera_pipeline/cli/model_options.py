"""Click options shared by commands that run the encoder: checkpoint, model, precision, batching."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def encoder_options(func: F) -> F:
    """Add --model, --data-source, --precision, --batch-size, --threads, --seed to a command."""
    decorators = [
        click.option("--model", "model_version", type=click.Choice(["v1.0", "v1.1"]), default=None,
                     help="Model version; default: what the checkpoint's layout says (a mismatch is an error)."),
        click.option("--data-source", type=click.Choice(["mpc", "aws"]), default=None,
                     help="v1.1 normalisation set; must match the checkpoint. Default: the checkpoint's config, else mpc."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
                     help="Default: bf16 where the hardware has fast bf16 (AMX, AVX512-BF16, CUDA >= 8.0); fp16 on "
                     "CUDA 7.x (T4, V100); else fp32."),
        click.option("--batch-size", type=click.IntRange(1), default=None,
                     help="Pixels (of 64 tokens) per forward pack. Default 256 on CPU, 2048 on GPUs."),
        click.option("--threads", type=click.IntRange(1), default=None, help="Torch threads (default: physical cores)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="v1.0 only: seed of the per-pixel observation sampling (same seed, same bytes)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)
