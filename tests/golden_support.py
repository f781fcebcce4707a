"""The golden fixtures' acceptance bar (tests/fixtures/golden/README.md section 4), shared by the tests that check against them."""

from __future__ import annotations

import numpy as np


def assert_int8_matches(got: np.ndarray, expected: np.ndarray) -> None:
    """>= 99.9 % identical and never off by more than one."""
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert got.dtype == np.int8 and got.shape == expected.shape
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999


def assert_scales_match(got: np.ndarray, expected: np.ndarray) -> None:
    """Scales within 1e-5 relative; pixels upstream skipped stay exactly 0."""
    assert got.dtype == np.float32 and got.shape == expected.shape
    skipped = expected == 0
    assert np.array_equal(got[skipped], expected[skipped])
    rel = np.abs(got[~skipped] - expected[~skipped]) / expected[~skipped]
    assert rel.max() <= 1e-5
