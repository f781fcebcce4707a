"""Small-object I/O for the store on a local path or `s3://`: atomic puts, listings, deletes.

Zarr writes the bulk arrays; this module does what the commit protocol needs beyond zarr: a
marker put that readers see whole or not at all (os.replace locally, one PUT on S3), durability
(fsync locally; a completed PUT is durable on S3), one listing for many markers, and tree deletes.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

from tessera_pipeline.errors import StoreError, StoreUnreachableError

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the commit protocol needs from a storage location."""

    url: str

    def zarr_store(self, key: str = "") -> Any:
        """A zarr v3 store rooted at the store root, or at a prefix under it."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write an object that readers see entirely or not at all, durably."""

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write many new objects (keys nobody reads yet) as fast as the backend allows."""

    def list_children(self, key: str) -> list[str]:
        """Names of the immediate children of a prefix (files and folders); empty if absent."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key under a prefix, relative to the root, in one listing."""

    def delete_tree(self, key: str) -> None:
        """Delete a prefix and everything under it; absent is fine."""

    def delete(self, key: str) -> None:
        """Delete one object; absent is fine."""

    def make_durable(self, key: str) -> None:
        """Make everything written under a prefix durable before a commit marker names it."""


def is_s3(url: str) -> bool:
    """True when the store URL is an S3 (or S3-compatible) location."""
    return url.startswith("s3://")


def open_backend(url: str) -> Backend:
    """The backend for a store URL: `s3://bucket/prefix` or a local path (file:// allowed)."""
    if is_s3(url):
        return S3Backend(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise StoreError(f"unsupported store URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalBackend(url)


class LocalBackend:
    """A store in a local directory; atomic puts by write-fsync-rename, durable by fsync."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def zarr_store(self, key: str = "") -> Any:
        """A zarr LocalStore at the root, or at a prefix under it."""
        import zarr.storage

        self.root.mkdir(parents=True, exist_ok=True)
        return zarr.storage.LocalStore(self._path(key))

    def get(self, key: str) -> bytes | None:
        """Read a file, or None when absent."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write to a hidden temporary file, fsync it, rename over the target, fsync the folder."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write new files in place (their version folder is invisible until committed)."""
        for key, data in items.items():
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def list_children(self, key: str) -> list[str]:
        """Names in a directory, hidden temporaries excluded."""
        try:
            return sorted(e.name for e in os.scandir(self._path(key)) if not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_keys(self, prefix: str) -> list[str]:
        """Every file under a prefix (os.walk; hidden temporaries excluded)."""
        base = self._path(prefix)
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{name}" for name in files if not name.startswith("."))
        return keys

    def delete_tree(self, key: str) -> None:
        """Remove a directory tree."""
        shutil.rmtree(self._path(key), ignore_errors=True)

    def delete(self, key: str) -> None:
        """Remove one file."""
        self._path(key).unlink(missing_ok=True)

    def make_durable(self, key: str) -> None:
        """fsync every file and directory under the prefix, and the parents up to the root."""
        base = self._path(key)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(Path(dirpath))
        parent = base
        while parent != self.root and parent.parent != parent:
            parent = parent.parent
            _fsync_dir(parent)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Bounds on S3: seconds to connect, seconds per socket read, attempts per request (botocore's
#: standard retry mode backs off between them), s3fs's own tries for a body cut short mid-read,
#: and the total seconds any one store operation may take. A refused connection fails in seconds.
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0
S3_ATTEMPTS = 3
S3FS_TRIES = 3
S3_OPERATION_BUDGET_S = 600.0


def s3_storage_options() -> dict[str, Any]:
    """s3fs options from the standard AWS variables (endpoint, region), with bounded timeouts and retries."""
    options: dict[str, Any] = {
        "use_listings_cache": False,
        "config_kwargs": {
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        },
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


class S3Backend:
    """A store under `s3://bucket/prefix` through s3fs; every put is one PUT, hence atomic."""

    def __init__(self, url: str) -> None:
        import s3fs

        self.url = url.rstrip("/")
        self.base = self.url[len("s3://") :]
        if not self.base or self.base.startswith("/"):
            raise StoreError(f"bad S3 store URL {url!r}: expected s3://bucket[/prefix]")
        fs = s3fs.S3FileSystem(**s3_storage_options())
        fs.retries = S3FS_TRIES
        self.fs = _BoundedFS(fs, self.url)

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def zarr_store(self, key: str = "") -> Any:
        """A zarr FsspecStore over an asynchronous s3fs filesystem, at the root or a prefix under it."""
        import zarr.storage

        url = f"{self.url}/{key}" if key else self.url
        store = zarr.storage.FsspecStore.from_url(url, storage_options=s3_storage_options())
        store.fs.retries = S3FS_TRIES
        return store

    def get(self, key: str) -> bytes | None:
        """GET an object, or None when absent."""
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        return data

    def put_atomic(self, key: str, data: bytes) -> None:
        """One PUT: S3 makes an object visible whole, and only once it is durable."""
        self.fs.pipe_file(self._path(key), data)

    def put_many(self, items: dict[str, bytes]) -> None:
        """Concurrent PUTs (s3fs batches them; objects over 100 MB go multipart)."""
        if items:
            self.fs.pipe({self._path(key): data for key, data in items.items()})

    def list_children(self, key: str) -> list[str]:
        """Immediate children (one delimited LIST)."""
        try:
            entries = self.fs.ls(self._path(key), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under a prefix: one paginated, undelimited LIST (1,000 keys a page)."""
        start = len(self.base) + 1
        try:
            found = self.fs.find(self._path(prefix), withdirs=False)
        except FileNotFoundError:
            return []
        return [k[start:] for k in found]

    def delete_tree(self, key: str) -> None:
        """Delete every object under a prefix (batched DeleteObjects)."""
        try:
            self.fs.rm(self._path(key), recursive=True)
        except FileNotFoundError:
            log.debug("nothing to delete under %s", key)

    def delete(self, key: str) -> None:
        """Delete one object (S3 deletes of absent keys succeed)."""
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            log.debug("nothing to delete at %s", key)

    def make_durable(self, key: str) -> None:
        """Nothing to do: a PUT that returned is durable."""


class _BoundedFS:
    """An s3fs filesystem whose calls have a total time budget and fail as one-line StoreErrors.

    "Not found" stays FileNotFoundError (callers turn it into None or []); access denied, missing
    credentials and unreachable endpoints become StoreError / StoreUnreachableError naming the store.
    """

    def __init__(self, fs: Any, url: str) -> None:
        self._fs = fs
        self._url = url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr
        timed = hasattr(self._fs, f"_{name}")  # a sync wrapper of an async method takes `timeout`

        def call(*args: Any, **kwargs: Any) -> Any:
            if timed:
                kwargs.setdefault("timeout", S3_OPERATION_BUDGET_S)
            try:
                return attr(*args, **kwargs)
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise _store_error(self._url, name, exc) from exc

        return call


def _store_error(url: str, operation: str, exc: Exception) -> StoreError:
    """A one-line StoreError for a failed S3 call: denied, no credentials, or unreachable."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PermissionError):
        return StoreError(f"{url}: access denied ({operation}: {detail})")
    if isinstance(exc, NoCredentialsError):
        return StoreError(f"{url}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    if isinstance(exc, BotoCoreError | OSError | TimeoutError):
        return StoreUnreachableError(
            f"{url}: S3 endpoint {endpoint} unreachable ({operation} failed after {S3_ATTEMPTS} attempts "
            f"or {S3_OPERATION_BUDGET_S:.0f} s: {detail})"
        )
    return StoreError(f"{url}: {operation} failed: {detail}")
