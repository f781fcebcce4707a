"""Reading what the pipeline wrote: points, probes and regions across tiles on geotessera's zone grid.

`open_reader(store, release=...)` returns a `Reader`; see docs/reading.md.
"""

from tessera_pipeline.read.points import NO_OBSERVATIONS, OUTSIDE, PENDING, STATUSES, VALID, WATER, PointSamples
from tessera_pipeline.read.reader import Reader, open_reader

__all__ = ["NO_OBSERVATIONS", "OUTSIDE", "PENDING", "STATUSES", "VALID", "WATER", "PointSamples", "Reader", "open_reader"]
