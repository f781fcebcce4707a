"""Which versions the store's releases pin: what a commit's cleanup asks right before it deletes anything.

One listing of `_releases/` per question; each release's `path` column is read once per process and
cached (releases are immutable), as a sorted array searched for the candidates.
"""

from __future__ import annotations

import io
import threading

import numpy as np

from tessera_pipeline.store import layout
from tessera_pipeline.store.backend import Backend

_PINS: dict[tuple[str, str, float], np.ndarray] = {}
_PINS_LOCK = threading.Lock()


def release_names(backend: Backend) -> list[tuple[str, float]]:
    """The store's releases as (key, last-modified) from one listing of `_releases/`."""
    base = f"{layout.RELEASES_PREFIX}/"
    return sorted(
        (key, modified)
        for key, modified in backend.scan(base)
        if key.endswith(layout.RELEASE_SUFFIX) and "/" not in key[len(base):]
    )


def _release_paths(backend: Backend, key: str, modified: float) -> np.ndarray:
    """The sorted version paths a release names (read once per process and release, then cached)."""
    cache = (backend.url, key, modified)
    with _PINS_LOCK:
        known = _PINS.get(cache)
    if known is not None:
        return known
    data = backend.get(key)
    if data is None:
        return np.array([], dtype=bytes)  # dropped since the listing: pins nothing
    import pyarrow.parquet as pq

    paths = pq.read_table(io.BytesIO(data), columns=["path"])["path"].to_numpy(zero_copy_only=False)
    pins = np.sort(paths.astype(bytes))
    with _PINS_LOCK:
        _PINS[cache] = pins
    return pins


def pinned(backend: Backend, paths: list[str]) -> set[str]:
    """Which of these version paths a release names now (one listing of `_releases/`, cached release reads)."""
    if not paths:
        return set()
    wanted = np.array(paths, dtype=bytes)
    named = np.zeros(len(paths), dtype=bool)
    for key, modified in release_names(backend):
        pins = _release_paths(backend, key, modified)
        if len(pins):
            named |= pins[np.minimum(np.searchsorted(pins, wanted), len(pins) - 1)] == wanted
    return {p for p, hit in zip(paths, named.tolist()) if hit}
