"""Locations: what a URL is (local path, `file://`, `s3://bucket/key`, `https://`) and how to reach it.

The one place that parses location URLs and builds S3 clients and settings, so inputs,
checkpoints, the store and the benches reach S3 the same way: endpoint and region from the
standard AWS variables, credentials from boto's normal chain, bounded timeouts and retries, and
anonymous (unsigned) requests when `AWS_NO_SIGN_REQUEST` says so or no credentials are found.
Ground floor: imports nothing from the pipeline's other layers.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Bounds on S3: seconds to connect, seconds per socket read, attempts per request (botocore's
#: standard retry mode backs off between them), s3fs's own tries for a body cut short mid-read,
#: and the total seconds any one store operation may take. A refused connection fails in seconds.
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0
S3_ATTEMPTS = 3
S3FS_TRIES = 3
S3_OPERATION_BUDGET_S = 600.0
#: Connections per client: whole-store commands list and read with up to this many threads.
S3_POOL_CONNECTIONS = 32

#: Bounds on plain HTTP(S) reads: seconds to connect and per socket read, attempts on 5xx or a
#: dropped connection, and the first backoff between attempts (doubled each time).
HTTP_CONNECT_TIMEOUT_S = 5.0
HTTP_READ_TIMEOUT_S = 60.0
HTTP_ATTEMPTS = 3
HTTP_BACKOFF_S = 0.25

#: Values of AWS_NO_SIGN_REQUEST (the variable the AWS CLI and GDAL read) that mean "send unsigned requests".
_TRUE = {"yes", "true", "1", "on"}


@dataclass(frozen=True)
class Location:
    """A parsed location: `scheme` is "file", "s3", "http" or "https"; `path` the local path (file only);
    `bucket` and `key` the S3 object (s3 only); `url` the location as given (file:// stripped)."""

    scheme: str
    url: str
    path: str = ""
    bucket: str = ""
    key: str = ""


def parse(url: str | os.PathLike[str]) -> Location:
    """Parse a location: a local path (or `file://` URL), `s3://bucket[/key]`, or `http(s)://host/path`.

    Any other `scheme://` is an error (ValueError): a typo must not become a local folder.
    """
    text = os.fspath(url)
    if is_s3(text):
        bucket, key = split_s3(text)
        return Location("s3", text, bucket=bucket, key=key)
    if is_http(text):
        return Location(text.split("://", 1)[0].lower(), text)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        raise ValueError(f"unsupported location {text!r}: use a local path, s3://bucket/key or https://host/path")
    return Location("file", text, path=text)


def is_s3(url: str | os.PathLike[str]) -> bool:
    """True for an `s3://bucket/key` location (S3 or any S3-compatible store)."""
    return os.fspath(url).startswith("s3://")


def is_http(url: str | os.PathLike[str]) -> bool:
    """True for an `http://` or `https://` location (read-only: plain HTTP cannot list or write)."""
    return os.fspath(url).lower().startswith(("http://", "https://"))


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` URL; the key has no leading or trailing slash."""
    rest = url[len("s3://") :] if is_s3(url) else ""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3 URL: {url!r}")
    return bucket, key.strip("/")


# --- S3 settings ------------------------------------------------------------------------------------


def s3_endpoint() -> str | None:
    """The S3 endpoint from the standard AWS variables (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    """The region from the standard AWS variables (None: botocore's own resolution)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def no_sign_requested() -> bool:
    """True when AWS_NO_SIGN_REQUEST asks for unsigned (anonymous) requests: YES, true or 1."""
    return os.environ.get("AWS_NO_SIGN_REQUEST", "").strip().lower() in _TRUE


_ANONYMOUS: dict[tuple[Any, ...], bool] = {}
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _identity() -> tuple[Any, ...]:
    """What the AWS variables say about who is asking where: a new value gets a new client."""
    return (
        os.getpid(),
        s3_endpoint(),
        s3_region(),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_PROFILE"),
        no_sign_requested(),
        os.environ.get("AWS_MAX_ATTEMPTS"),
        os.environ.get("AWS_RETRY_MODE"),
    )


def s3_anonymous() -> bool:
    """True when S3 requests go unsigned: AWS_NO_SIGN_REQUEST is set, or boto's chain finds no credentials.

    The credential lookup runs once per process and identity (it may ask the instance metadata
    service, which costs a second where there is none).
    """
    if no_sign_requested():
        return True
    key = _identity()
    with _LOCK:
        known = _ANONYMOUS.get(key)
    if known is None:
        import boto3.session

        known = boto3.session.Session().get_credentials() is None
        if known:
            log.info("no S3 credentials found: reading S3 anonymously (unsigned requests)")
        with _LOCK:
            _ANONYMOUS[key] = known
    return known


def s3_attempts() -> int:
    """Attempts per S3 request: AWS_MAX_ATTEMPTS when set (a standard AWS variable), else S3_ATTEMPTS."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    return max(1, int(value)) if value.isdigit() else S3_ATTEMPTS


def s3_config_kwargs() -> dict[str, Any]:
    """botocore Config arguments shared by s3fs and the boto3 client: bounded timeouts and retries
    (AWS_RETRY_MODE, default "standard"), every attempt fitting S3_OPERATION_BUDGET_S."""
    attempts = s3_attempts()
    per_attempt = S3_OPERATION_BUDGET_S / attempts
    return {
        "connect_timeout": min(S3_CONNECT_TIMEOUT_S, per_attempt),
        "read_timeout": min(S3_READ_TIMEOUT_S, per_attempt),
        "retries": {"max_attempts": attempts, "mode": os.environ.get("AWS_RETRY_MODE") or "standard"},
        "max_pool_connections": S3_POOL_CONNECTIONS,
    }


def s3_storage_options() -> dict[str, Any]:
    """s3fs options from the standard AWS variables (endpoint, region, anonymous), bounded like the client."""
    options: dict[str, Any] = {"use_listings_cache": False, "config_kwargs": s3_config_kwargs()}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    region = s3_region()
    if region:
        options["client_kwargs"] = {"region_name": region}
    if s3_anonymous():
        options["anon"] = True
    return options


def s3_client() -> Any:
    """The boto3 S3 client for the current environment: endpoint, region, bounded timeouts and retries,
    unsigned when anonymous. One per process and identity (building one costs ~0.1 s)."""
    key = (*_identity(), s3_anonymous(), S3_OPERATION_BUDGET_S)
    with _LOCK:
        client = _CLIENTS.get(key)
    if client is None:
        import boto3.session
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(**s3_config_kwargs(), **({"signature_version": UNSIGNED} if key[-2] else {}))
        client = boto3.session.Session().client("s3", endpoint_url=key[1], region_name=key[2], config=config)
        with _LOCK:
            client = _CLIENTS.setdefault(key, client)
    return client


# --- plain HTTP(S) ----------------------------------------------------------------------------------


def http_request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> bytes | None:
    """One HTTP request with bounded timeouts, retried on 5xx and dropped connections; None on 404.

    Other answers (403, 4xx, 5xx after the last attempt) and network failures raise OSError
    (urllib's HTTPError / URLError, or TimeoutError) for the caller to turn into its own typed error.
    """
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, headers=headers or {})
    timeout = max(HTTP_CONNECT_TIMEOUT_S, HTTP_READ_TIMEOUT_S)
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a user's store URL
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                return None
            if exc.code < 500 or attempt == HTTP_ATTEMPTS:
                raise
            error: OSError = exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if attempt == HTTP_ATTEMPTS:
                raise
            error = exc
        delay = HTTP_BACKOFF_S * 2 ** (attempt - 1)
        log.debug("%s %s attempt %d failed (%s); retrying in %.2f s", method, url, attempt, error, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def http_storage_options() -> dict[str, Any]:
    """fsspec HTTPFileSystem options: bounded timeouts, and no listing or size probes a read-only front may refuse."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(sock_connect=HTTP_CONNECT_TIMEOUT_S, sock_read=HTTP_READ_TIMEOUT_S)
    return {"client_kwargs": {"timeout": timeout}, "simple_links": False}
