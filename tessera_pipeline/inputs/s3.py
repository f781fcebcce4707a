"""Fetch d-pixel files from any S3-compatible object store into a local cache, with retries.

Configuration comes from the standard AWS variables and files only (AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_PROFILE,
AWS_NO_SIGN_REQUEST), read by `tessera_pipeline.locations`, so AWS, MinIO, Ceph, R2 or source.coop
(anonymously too) work without project-specific settings. Files are streamed to
disk (never held in memory) and then memory-mapped by the reader.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tessera_pipeline.errors import MissingFileError, RemoteInputError
from tessera_pipeline.locations import is_s3, s3_client, split_s3

__all__ = ["cache_path", "default_cache_dir", "evict", "fetch", "is_s3", "s3_client", "split_s3", "with_retries"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts per S3 call (botocore retries inside each attempt too) and the base backoff, seconds.
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 0.5
#: Error codes that mean "this object is not there" rather than "try again".
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_PERMANENT = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName"}


def _error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError, or "" for other exceptions."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def with_retries(call: Callable[[], T], *, what: str, tile: str | None, file: str) -> T:
    """Run an S3 call, retrying transient failures with jittered exponential backoff."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return call()
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND:
                raise MissingFileError("missing file (no such object)", tile=tile, file=file) from exc
            if code in _PERMANENT or attempt == MAX_ATTEMPTS:
                raise RemoteInputError(f"{what} failed: {code or exc}", tile=tile, file=file) from exc
            error: Exception = exc
        except (BotoCoreError, OSError) as exc:
            if attempt == MAX_ATTEMPTS:
                raise RemoteInputError(f"{what} failed after {attempt} attempts: {exc}", tile=tile, file=file) from exc
            error = exc
        delay = BACKOFF_BASE_S * 2 ** (attempt - 1) * (0.5 + random.random())
        log.warning("%s %s attempt %d failed (%s); retrying in %.1fs", what, file, attempt, error, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def default_cache_dir() -> Path:
    """Where fetched tiles go: $TESSERA_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /tessera-pipeline/s3."""
    env = os.environ.get("TESSERA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tessera-pipeline" / "s3"


def cache_path(url: str, cache_dir: Path | None = None) -> Path:
    """The local path an `s3://bucket/key` object is cached at."""
    bucket, key = split_s3(url)
    return (cache_dir or default_cache_dir()) / bucket / key


def fetch(url: str, *, tile: str | None = None, cache_dir: Path | None = None, required: bool = True) -> Path | None:
    """Download one object into the cache (skipped when a same-size, same-ETag copy is there); return its path.

    A missing object raises MissingFileError, or returns None when `required` is False.
    """
    bucket, key = split_s3(url)
    client = s3_client()
    try:
        head = with_retries(lambda: client.head_object(Bucket=bucket, Key=key), what="HEAD", tile=tile, file=url)
    except MissingFileError:
        if required:
            raise
        return None
    size = int(head["ContentLength"])
    etag = str(head.get("ETag", "")).strip('"')
    local = cache_path(url, cache_dir)
    tag_file = local.with_name(local.name + ".etag")
    if local.is_file() and local.stat().st_size == size and tag_file.is_file() and tag_file.read_text() == etag:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f"{local.name}.part-{os.getpid()}")

    def download() -> None:
        client.download_file(bucket, key, str(partial))

    try:
        with_retries(download, what="GET", tile=tile, file=url)
        if partial.stat().st_size != size:
            raise RemoteInputError(
                f"download incomplete: {partial.stat().st_size} of {size} bytes", tile=tile, file=url
            )
        os.replace(partial, local)
        tag_file.write_text(etag)
    finally:
        partial.unlink(missing_ok=True)
    log.debug("fetched %s -> %s (%d bytes)", url, local, size)
    return local


def evict(url: str, cache_dir: Path | None = None) -> None:
    """Delete a tile directory's cached copy (call after a tile is encoded to bound disk use)."""
    import shutil

    shutil.rmtree(cache_path(url, cache_dir), ignore_errors=True)
