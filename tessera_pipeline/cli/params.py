"""Click callbacks that check option values at parse time, so a malformed value is a usage error (exit 2)
before a command starts any work."""

from __future__ import annotations

import click

from tessera_pipeline.inputs.synthetic import MAX_TILE_SIZE, parse_size


def size_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check an HxW --size (positive, at most the largest grid tile); the text is passed on unchanged."""
    if value is None:
        return None
    try:
        height, width = parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if height > MAX_TILE_SIZE[0] or width > MAX_TILE_SIZE[1]:
        raise click.BadParameter(
            f"{value} is larger than any grid tile (at most {MAX_TILE_SIZE[0]}x{MAX_TILE_SIZE[1]})"
        )
    return value
