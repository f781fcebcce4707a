"""matplotlib for the pictures the package draws (plan charts, the status map, the demo's tiles), on the
file-only Agg backend, so no display is ever needed."""

from __future__ import annotations

from typing import Any

from tessera_pipeline.errors import ConfigError


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend; ConfigError naming the package when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("pictures need matplotlib: pip install matplotlib") from exc
    return plt
