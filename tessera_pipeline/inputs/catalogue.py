"""Which tiles an input root holds for a year: one listing of `ROOT/{year}/`, local or `s3://`.

`run` checks its plan against this before it starts anything, so a wrong `--input` or `--year` costs one
line, not a cluster start and a failure record per tile.
"""

from __future__ import annotations

import os
from pathlib import Path

from tessera_pipeline.errors import MissingFileError, RemoteInputError
from tessera_pipeline.inputs.s3 import is_s3, s3_client, split_s3


def _local(root: str, year: int) -> set[str]:
    base = Path(root)
    if not base.is_dir():
        raise MissingFileError(f"input root {root} does not exist (check --input)")
    year_dir = base / str(year)
    if not year_dir.is_dir():
        years = sorted(e.name for e in os.scandir(base) if e.is_dir() and e.name.isdigit())
        there = f"years there: {', '.join(years)}" if years else "it holds no year folders"
        raise MissingFileError(f"no inputs for {year} under {root} ({year_dir} does not exist; {there}; "
                               "check --input and --year)")
    return {e.name for e in os.scandir(year_dir) if e.is_dir()}


def _remote(root: str, year: int) -> set[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(root)
    prefix = f"{key}/{year}/" if key else f"{year}/"
    names: set[str] = set()
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names.update(cp["Prefix"][len(prefix):].rstrip("/") for cp in page.get("CommonPrefixes", []))
    except (ClientError, BotoCoreError) as exc:
        raise RemoteInputError(f"cannot list {root}/{year}/: {' '.join(str(exc).split())}") from exc
    if not names:
        raise MissingFileError(f"no inputs for {year} under {root} (nothing under {root.rstrip('/')}/{year}/; "
                               "check --input and --year)")
    return names


def tiles_with_inputs(root: str, year: int) -> set[str]:
    """Names of the tile folders under `ROOT/{year}/`; MissingFileError naming what is missing when there are none."""
    return _remote(str(root), year) if is_s3(str(root)) else _local(str(root), year)
