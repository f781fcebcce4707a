"""Small-object I/O for the store on a local path or `s3://` (or, read-only, `https://`): atomic and
conditional puts, listings, deletes.

Zarr writes the bulk arrays; this module does what the commit protocol needs beyond zarr: a
marker put that readers see whole or not at all (os.replace locally, one PUT on S3), a put that
happens only if the object is still what the writer last read (`get_tagged` / `put_if`: flock
locally, If-Match / If-None-Match on S3), durability (fsync locally; a completed PUT is durable on
S3), one listing for many markers, and tree deletes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Protocol

from tessera_pipeline import locations
from tessera_pipeline.errors import StoreError, StoreUnreachableError
from tessera_pipeline.locations import S3FS_TRIES, is_s3, s3_client, s3_storage_options

__all__ = ["Backend", "HttpBackend", "LocalBackend", "S3Backend", "TimedObject", "is_s3", "open_backend", "s3_client", "s3_storage_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimedObject:
    """An object read with its content tag and its age in seconds as the store's clock tells it."""

    data: bytes
    tag: str
    age_s: float


class Backend(Protocol):
    """What the commit protocol needs from a storage location."""

    url: str
    #: True where listings of disjoint prefixes run faster side by side (S3), False where they share one disk.
    concurrent_listing: bool
    #: False where a LIST may be refused (plain HTTPS; anonymous S3, whose public buckets often allow GET
    #: only): readers then check the objects they need one by one instead of listing.
    listable: bool

    def zarr_store(self, key: str = "") -> Any:
        """A zarr v3 store rooted at the store root, or at a prefix under it."""

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write an object that readers see entirely or not at all, durably."""

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and an opaque tag of that content (for `put_if`), or None when absent."""

    def get_timed(self, key: str) -> TimedObject | None:
        """The object's bytes, tag and age on the store's own clock (its last-modified time against the
        store's "now"), or None when absent: expiry judged this way is immune to the caller's clock skew."""

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """Write atomically only if the object's tag is still `tag` (None: only if absent).

        True when written (or when it already holds exactly `data`: a retried put whose first try
        landed), False when someone else changed it since `tag` was read.
        """

    @property
    def conditional_writes(self) -> bool:
        """True when `put_if` is enforced by the store; False: it is read-compare-put, racy."""

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write many new objects (keys nobody reads yet) as fast as the backend allows."""

    def exists(self, keys: list[str]) -> list[bool]:
        """Whether each object exists: a stat each locally, a HEAD each on S3 (many keys on S3: list instead)."""

    def list_children(self, key: str) -> list[str]:
        """Names of the immediate children of a prefix (files and folders); empty if absent."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every object key under a prefix, relative to the root, in one listing."""

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Every object whose key starts with `prefix` (a folder or a partial name), with its
        last-modified time (epoch seconds), streamed page by page (1,000 keys a request on S3)."""

    def delete_tree(self, key: str) -> None:
        """Delete a prefix and everything under it; absent is fine."""

    def delete(self, key: str) -> None:
        """Delete one object; absent is fine."""

    def make_durable(self, key: str) -> None:
        """Make everything written under a prefix durable before a commit marker names it."""


def open_backend(url: str) -> Backend:
    """The backend for a store URL: `s3://bucket/prefix`, `https://host/path` (read-only) or a local path (file:// allowed)."""
    try:
        where = locations.parse(url)
    except ValueError as exc:
        raise StoreError(f"unsupported store URL {url!r}: use a local path, s3://bucket/prefix or https://host/path") from exc
    if where.scheme == "s3":
        return S3Backend(url)
    if where.scheme in ("http", "https"):
        return HttpBackend(url)
    return LocalBackend(where.path)


class LocalBackend:
    """A store in a local directory; atomic puts by write-fsync-rename, durable by fsync."""

    concurrent_listing = False
    listable = True

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
        """Read a file, or None when absent (one unbuffered open and read: whole-store commands read 10^5 markers)."""
        try:
            with open(f"{self.url}/{key}" if key else self.url, "rb", buffering=0) as f:
                return f.readall()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write to a hidden temporary file, fsync it, rename over the target, fsync the folder.

        Under the key's lock when the key has one (it was ever `put_if`-written), so an
        unconditional put never lands between a `put_if`'s compare and its swap.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path, create=False):
            self._replace(path, data)

    @property
    def conditional_writes(self) -> bool:
        """Always True: `put_if` is a compare-and-swap under an exclusive flock."""
        return True

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and their sha256 hex, or None when absent (os.replace makes the read whole)."""
        data = self.get(key)
        return None if data is None else (data, _sha256(data))

    def get_timed(self, key: str) -> TimedObject | None:
        """The file, its sha256 and its age: the filesystem's modification time against the kernel's real-time
        clock (never the process's `time.time`, which a test or a skewed library may shift)."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.readall()
                modified = os.fstat(f.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        age = time.clock_gettime(time.CLOCK_REALTIME) - modified
        return TimedObject(data, _sha256(data), max(0.0, age))

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """Compare the file's sha256 with `tag` and replace it atomically, all under the key's flock."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path, create=True):
            current = self.get(key)
            if (None if current is None else _sha256(current)) != tag:
                return current == data
            self._replace(path, data)
        return True

    @contextmanager
    def _locked(self, path: Path, *, create: bool) -> Iterator[None]:
        """Hold an exclusive flock on the hidden `.{name}.lock` beside `path` (absent and not `create`: no lock)."""
        lock = path.with_name(f".{path.name}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except (FileNotFoundError, NotADirectoryError):
            if create:
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, path: Path, data: bytes) -> None:
        """Write a hidden temporary file, fsync it, os.replace it over `path`, fsync the folder."""
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

    def exists(self, keys: list[str]) -> list[bool]:
        """A stat per file."""
        root = str(self.root)
        return [os.path.isfile(f"{root}/{key}") for key in keys]

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

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Files whose key starts with `prefix`, with their mtimes (scandir; hidden temporaries excluded)."""
        path = self._path(prefix)
        if prefix.endswith("/") or path.is_dir():
            folder, start = path, ""
        else:
            folder, start = path.parent, path.name
        rel = folder.relative_to(self.root).as_posix() if folder != self.root else ""
        yield from self._scan_dir(folder, rel, start)

    def _scan_dir(self, folder: Path, rel: str, start: str = "") -> Iterator[tuple[str, float]]:
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.startswith(start):
                    continue
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    yield from self._scan_dir(Path(entry.path), key)
                else:
                    yield key, entry.stat(follow_symlinks=False).st_mtime

    def delete_tree(self, key: str) -> None:
        """Remove a directory tree."""
        shutil.rmtree(self._path(key), ignore_errors=True)

    def delete(self, key: str) -> None:
        """Remove one file (under its lock when it has one, so a racing `put_if` sees it absent or present)."""
        path = self._path(key)
        with self._locked(path, create=False):
            path.unlink(missing_ok=True)

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


def _server_age(resp: dict[str, Any]) -> float:
    """Seconds between an S3 object's LastModified and the response's Date header (the server's clock)."""
    from email.utils import parsedate_to_datetime

    modified = resp.get("LastModified")
    date = (resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date")
    if modified is None or not date:
        raise StoreError("the S3 endpoint sent no LastModified or Date header: cannot judge a lease by the store's clock")
    now = parsedate_to_datetime(date)
    if modified.tzinfo is None:  # some endpoints send a naive time: S3 times are UTC
        modified = modified.replace(tzinfo=timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return max(0.0, (now - modified).total_seconds())


def _sha256(data: bytes) -> str:
    """The local backend's tag: sha256 hex of the content."""
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CONDITIONAL: dict[tuple[str | None, str], bool] = {}
_CACHE_LOCK = threading.Lock()

#: Error codes S3 answers a failed If-Match / If-None-Match with (412), or a concurrent
#: conditional write to the same key (409): either way the object is not what the writer read.
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3Backend:
    """A store under `s3://bucket/prefix` through s3fs; every put is one PUT, hence atomic."""

    concurrent_listing = True

    def __init__(self, url: str) -> None:
        import s3fs

        self.listable = not locations.s3_anonymous()
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
        """GET an object (one request, no HEAD before it), or None when absent."""
        tagged = self.get_tagged(key)
        return None if tagged is None else tagged[0]

    def put_atomic(self, key: str, data: bytes) -> None:
        """One PUT: S3 makes an object visible whole, and only once it is durable."""
        self.fs.pipe_file(self._path(key), data)

    def _bucket_key(self, key: str) -> tuple[str, str]:
        """The bucket and object key of a store key."""
        bucket, _, obj = self._path(key).partition("/")
        return bucket, obj

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        """One GetObject: the body and its ETag (as S3 quotes it), or None when absent."""
        from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError

        bucket, obj = self._bucket_key(key)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = s3_client().get_object(Bucket=bucket, Key=obj)
                return resp["Body"].read(), str(resp["ETag"])
            except ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "NoSuchBucket", "404"):
                    return None
                raise _client_error(self.url, "get_object", exc) from exc
            except (IncompleteReadError, ResponseStreamingError) as exc:
                if attempt >= locations.s3_attempts():
                    raise _store_error(self.url, "get_object", exc) from exc
                log.debug("GET %s cut short (%s); reading again", key, exc)
            except Exception as exc:
                raise _store_error(self.url, "get_object", exc) from exc

    def get_timed(self, key: str) -> TimedObject | None:
        """One GetObject: body, ETag, and age as the server's `Date` minus the object's `LastModified` (both the
        store's clock, second resolution), or None when absent."""
        from botocore.exceptions import ClientError

        bucket, obj = self._bucket_key(key)
        try:
            resp = s3_client().get_object(Bucket=bucket, Key=obj)
            data = resp["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "NoSuchBucket", "404"):
                return None
            raise _client_error(self.url, "get_object", exc) from exc
        except Exception as exc:
            raise _store_error(self.url, "get_object", exc) from exc
        return TimedObject(data, str(resp["ETag"]), _server_age(resp))

    @property
    def conditional_writes(self) -> bool:
        """Whether this endpoint honours If-None-Match / If-Match on PUT (probed once per process and store)."""
        cache = (locations.s3_endpoint(), self.url)
        with _CACHE_LOCK:
            known = _CONDITIONAL.get(cache)
        if known is None:
            known = self._probe()
            with _CACHE_LOCK:
                first = cache not in _CONDITIONAL
                _CONDITIONAL.setdefault(cache, known)
            if first and not known:
                log.warning(
                    "%s: the S3 endpoint %s ignores conditional writes (If-None-Match); commit markers are "
                    "last-writer-wins here, so a stale writer is fenced only by the run layer and the "
                    "cleanup grace period",
                    self.url,
                    locations.s3_endpoint() or "AWS S3",
                )
        return known

    def _probe(self) -> bool:
        """PUT a fresh `_probe/` key with If-None-Match twice: honoured if the second is refused."""
        key = f"_probe/{uuid.uuid4().hex}"
        try:
            for _ in (1, 2):
                self._put(key, b"probe", if_none_match=True)
        except _Refused:
            return True  # the second PUT, or a retry of the first whose first try had landed
        except _Unsupported:
            return False
        finally:
            self.delete(key)
        return False

    def put_if(self, key: str, data: bytes, *, tag: str | None) -> bool:
        """PUT with If-None-Match: * (tag None) or If-Match: tag; a 412/409 means someone else changed it.

        On an endpoint that ignores those headers: read, compare, then put (racy; warned once).
        """
        if self.conditional_writes:
            try:
                self._put(key, data, if_none_match=tag is None, if_match=tag)
                return True
            except _Refused:
                found = self.get_tagged(key)
        else:
            found = self.get_tagged(key)
            if (None if found is None else found[1]) == tag:
                self._put(key, data)
                return True
        return found is not None and found[0] == data

    def _put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> None:
        """One PutObject, conditional when asked: _Refused when the condition failed, _Unsupported when rejected."""
        from botocore.exceptions import ClientError

        bucket, obj = self._bucket_key(key)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": obj, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        elif if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            s3_client().put_object(**kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _PRECONDITION_CODES or (if_match is not None and code in ("NoSuchKey", "404")):
                raise _Refused(code) from exc
            if (if_none_match or if_match is not None) and code in ("NotImplemented", "501"):
                raise _Unsupported(code) from exc
            raise _client_error(self.url, "put_object", exc) from exc
        except Exception as exc:
            raise _store_error(self.url, "put_object", exc) from exc

    def put_many(self, items: dict[str, bytes]) -> None:
        """Concurrent PUTs (s3fs batches them; objects over 100 MB go multipart)."""
        if items:
            self.fs.pipe({self._path(key): data for key, data in items.items()})

    def exists(self, keys: list[str]) -> list[bool]:
        """A HEAD per object (callers with many keys list instead: `listing.absent`); 404 is absent."""
        from botocore.exceptions import ClientError

        found: list[bool] = []
        for key in keys:
            bucket, obj = self._bucket_key(key)
            try:
                s3_client().head_object(Bucket=bucket, Key=obj)
                found.append(True)
            except ClientError as exc:
                if _error_code(exc) not in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
                    raise _client_error(self.url, "head_object", exc) from exc
                found.append(False)
            except Exception as exc:
                raise _store_error(self.url, "head_object", exc) from exc
        return found

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

    def scan(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Objects whose key starts with `prefix`: ListObjectsV2 pages of 1,000 keys, streamed."""
        from botocore.exceptions import ClientError

        bucket, obj = self._bucket_key(prefix)
        start = len(self.base) - len(bucket) if "/" in self.base else 0
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=obj, PaginationConfig={"PageSize": 1000})
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"][start:], item["LastModified"].timestamp()
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                return
            raise _client_error(self.url, "list_objects_v2", exc) from exc
        except StoreError:
            raise
        except Exception as exc:
            raise _store_error(self.url, "list_objects_v2", exc) from exc

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


class HttpBackend:
    """A read-only store behind plain HTTP(S) (a CDN or web server in front of a bucket): GETs and HEADs only.

    HTTP cannot list or write, so every such call raises StoreError: open a store here through a
    release or a manifest, which name every object a read needs.
    """

    concurrent_listing = True
    listable = False
    conditional_writes = False

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
        return None if data is None else (data, _sha256(data))

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
                kwargs.setdefault("timeout", locations.S3_OPERATION_BUDGET_S)
            try:
                return attr(*args, **kwargs)
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise _store_error(self._url, name, exc) from exc

        return call


class _Refused(Exception):
    """A conditional PUT's precondition did not hold (internal to S3Backend.put_if)."""


class _Unsupported(Exception):
    """The endpoint rejects conditional PUT headers outright (501 NotImplemented; internal to the probe)."""


def _error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError (or its HTTP status as a string)."""
    response: dict[str, Any] = getattr(exc, "response", {}) or {}
    code = response.get("Error", {}).get("Code")
    return str(code or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _client_error(url: str, operation: str, exc: Exception) -> StoreError:
    """A one-line StoreError for an S3 error answer: denied becomes "access denied", the rest name the code."""
    code = _error_code(exc)
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return _store_error(url, operation, PermissionError(" ".join(str(exc).split())))
    return _store_error(url, operation, exc)


def _store_error(url: str, operation: str, exc: Exception) -> StoreError:
    """A one-line StoreError for a failed S3 call: denied, no credentials, or unreachable."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    endpoint = locations.s3_endpoint() or "AWS S3"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PermissionError):
        return StoreError(f"{url}: access denied ({operation}: {detail})")
    if isinstance(exc, NoCredentialsError):
        return StoreError(f"{url}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    if isinstance(exc, BotoCoreError | OSError | TimeoutError):
        return StoreUnreachableError(
            f"{url}: S3 endpoint {endpoint} unreachable ({operation} failed after {locations.s3_attempts()} attempts "
            f"or {locations.S3_OPERATION_BUDGET_S:.0f} s: {detail})"
        )
    return StoreError(f"{url}: {operation} failed: {detail}")
