"""A read-only store behind plain HTTP(S): GETs (whole or ranged, through zarr) and HEADs; no listing, no writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tessera_pipeline import locations
from tessera_pipeline.errors import StoreError, StoreUnreachableError
from tessera_pipeline.store.backends.base import TimedObject, content_tag


class HttpBackend:
    """A read-only store behind plain HTTP(S) (a CDN or web server in front of a bucket): GETs and HEADs only.

    HTTP cannot list or write, so every such call raises StoreError: open a store here through a
    release or a manifest, which name every object a read needs.
    """

    concurrent_listing = True
    listable = False
    conditional_writes = False
    writable = False
    deletes = False
    ranged_reads = True

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _url(self, key: str) -> str:
        """The URL of a store key."""
        return f"{self.url}/{key}" if key else self.url

    def _refuse(self, operation: str) -> StoreError:
        """The typed error every list or write method raises: HTTP(S) stores are read-only and unlistable."""
        return StoreError(
            f"{self.url}: an https store cannot be listed or written ({operation}); "
            "open it through a release or a manifest, or use its s3:// location with credentials"
        )

    def zarr_store(self, key: str = "") -> Any:
        """A read-only zarr store over fsspec's HTTPFileSystem (byte-range GETs for sharded reads), its GETs
        retried on 5xx and dropped connections like `get`."""
        return _retrying_http_store().from_url(
            self._url(key), storage_options=locations.http_storage_options(), read_only=True
        )

    def get(self, key: str) -> bytes | None:
        """GET an object (retried on 5xx and dropped connections), or None on 404."""
        try:
            return locations.http_request(self._url(key))
        except OSError as exc:
            raise _http_error(self._url(key), "GET", exc) from exc

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and their sha256 hex (a read-only store has nothing to compare-and-swap)."""
        data = self.get(key)
        return None if data is None else (data, content_tag(data))

    def get_timed(self, key: str) -> TimedObject | None:
        """Refused: a read-only store holds no lease whose age matters."""
        raise self._refuse("get_timed")

    def exists(self, keys: list[str]) -> list[bool]:
        """A HEAD per object (404: absent)."""
        found: list[bool] = []
        for key in keys:
            try:
                found.append(locations.http_request(self._url(key), method="HEAD") is not None)
            except OSError as exc:
                raise _http_error(self._url(key), "HEAD", exc) from exc
        return found

    def put_atomic(self, key: str, data: bytes) -> None:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"put {key}")

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"put {key}")

    def put_many(self, items: dict[str, bytes]) -> None:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"put {len(items)} objects")

    def list_children(self, key: str) -> list[str]:
        """Refused: plain HTTP has no listing."""
        raise self._refuse(f"list {key or '/'}")

    def list_keys(self, prefix: str) -> list[str]:
        """Refused: plain HTTP has no listing."""
        raise self._refuse(f"list {prefix or '/'}")

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Refused: plain HTTP has no listing."""
        raise self._refuse(f"list {prefix or '/'}")

    def delete_tree(self, key: str) -> None:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"delete {key}")

    def delete(self, key: str) -> None:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"delete {key}")

    def make_durable(self, key: str) -> None:
        """Refused: HTTP(S) stores are read-only."""
        raise self._refuse(f"write {key}")


def _retrying_http_store() -> type:
    """zarr's FsspecStore whose `get` retries a 5xx answer, a dropped connection or a timeout
    (locations.HTTP_ATTEMPTS tries, backing off): aiohttp, under fsspec's HTTP filesystem, retries nothing."""
    import asyncio

    import aiohttp
    import zarr.storage

    class RetryingHttpStore(zarr.storage.FsspecStore):
        """A read-only FsspecStore over HTTP(S) with bounded retries of each GET."""

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            """GET a key (or a byte range of it), retried like `locations.http_request`; absent: None."""
            for attempt in range(1, locations.HTTP_ATTEMPTS + 1):
                try:
                    return await super().get(key, prototype, byte_range)
                except aiohttp.ClientResponseError as exc:
                    if exc.status < 500 or attempt == locations.HTTP_ATTEMPTS:
                        raise
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                    if attempt == locations.HTTP_ATTEMPTS:
                        raise
                await asyncio.sleep(locations.HTTP_BACKOFF_S * 2 ** (attempt - 1))
            raise AssertionError("unreachable")

    return RetryingHttpStore


def _http_error(url: str, operation: str, exc: OSError) -> StoreError:
    """A one-line StoreError naming the URL: an HTTP status answer, or unreachable after the bounded retries."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return StoreError(f"{url}: {operation} answered HTTP {exc.code} {exc.reason}")
    detail = " ".join(str(getattr(exc, "reason", None) or exc).split()) or type(exc).__name__
    return StoreUnreachableError(
        f"{url}: unreachable ({operation} failed after {locations.HTTP_ATTEMPTS} attempts: {detail})"
    )

