"""STAC items as one stac-geoparquet file (written in chunks, so a year's ~1.6 M items never sit in memory at once)
and read back, with the stac-geoparquet package's writer and reader."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: Items per Arrow batch when the items are converted (bounds memory for a whole year).
CHUNK_ITEMS = 16_384


def write_items(items: Iterable[dict[str, Any]], path: Path, *, collection: Mapping[str, Any]) -> int:
    """Items as one stac-geoparquet file (the collection in its metadata); returns the number written.

    Converted in chunks of CHUNK_ITEMS; the schema is unified over chunks spilled beside `path`, so a
    year's 1.6 M items never sit in memory at once.
    """
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    counted = _Counter(items)
    spill = Path(tempfile.mkdtemp(prefix=".stac-", dir=path.parent))
    try:
        reader = parse_stac_items_to_arrow(counted, chunk_size=CHUNK_ITEMS, schema="ChunksToDisk", tmpdir=spill)
        to_parquet(reader, path, collections={str(collection["id"]): dict(collection)}, compression="zstd")
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    if counted.n == 0:
        pq.write_table(_empty_items_table(), path)
    return counted.n


class _Counter:
    """Counts the items an iterable yields as it is consumed."""

    def __init__(self, items: Iterable[dict[str, Any]]) -> None:
        self.items = iter(items)
        self.n = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Each item, counted."""
        for item in self.items:
            self.n += 1
            yield item


def _empty_items_table() -> pa.Table:
    """A stac-geoparquet table of no items (id and geometry columns only)."""
    import pyarrow as pa

    return pa.table({"id": pa.array([], pa.string()), "geometry": pa.array([], pa.binary())})


def read_items(path: Path) -> list[dict[str, Any]]:
    """A stac-geoparquet file's items back as STAC JSON dicts (stac-geoparquet's reader)."""
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import stac_table_to_items

    table = pq.read_table(path)
    if table.num_rows == 0:
        return []
    return list(stac_table_to_items(table))
