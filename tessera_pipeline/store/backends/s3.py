"""A store under `s3://bucket/prefix` (AWS or any S3-compatible endpoint): one PUT per object, conditional
puts by If-Match / If-None-Match (probed once per endpoint), listings of 1,000 keys a page."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timezone
from typing import Any

from tessera_pipeline import locations
from tessera_pipeline.errors import StoreError, StoreUnreachableError
from tessera_pipeline.locations import S3FS_TRIES, s3_client, s3_storage_options
from tessera_pipeline.store.backends.base import ObjectStoreCapabilities, TimedObject

log = logging.getLogger(__name__)


_CONDITIONAL: dict[tuple[str | None, str], bool] = {}
_CACHE_LOCK = threading.Lock()

#: Error codes S3 answers a failed If-Match / If-None-Match with (412), or a concurrent
#: conditional write to the same key (409): either way the object is not what the writer read.
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3Backend(ObjectStoreCapabilities):
    """A store under `s3://bucket/prefix` through s3fs; every put is one PUT, hence atomic."""

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
