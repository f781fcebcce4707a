"""Checksums recorded in commit markers: sha256 of each array's raw bytes, C order, little-endian.

Hashing the decoded array (not the compressed objects) makes the checksum independent of codecs
and chunking, so any reader in any language can recompute it after decoding with its own library.
"""

from __future__ import annotations

import hashlib

import numpy as np

ALGORITHM = "sha256"


def array_sha256(array: np.ndarray) -> str:
    """Hex sha256 of an array's bytes in C order with little-endian scalars."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(little).data).hexdigest()
