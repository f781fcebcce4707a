"""Shared fixtures: one moto S3 server per test session, reachable through the standard AWS variables."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

# The GPU path's Triton kernels run in Triton's CPU interpreter where there is no GPU (tests/test_fused_kernels.py).
# The switch is read when Triton is first imported; on a CPU nothing uses Triton unless a test asks for it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from s3server import TEST_CREDENTIALS, create_bucket, moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server once and point AWS_ENDPOINT_URL (and test credentials) at it."""
    saved = {key: os.environ.get(key) for key in (*TEST_CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    with moto_server() as endpoint:
        os.environ.update(TEST_CREDENTIALS)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def new_bucket(s3_endpoint: str) -> Callable[[str], str]:
    """Factory: create a fresh, uniquely named bucket on the test server (prefix-name-xxxxxxxx)."""

    def make(prefix: str = "test") -> str:
        return create_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}")

    return make
