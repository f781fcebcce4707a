"""The store's backends, under their old import path: the interface, the implementations and `open_backend`
now live in `tessera_pipeline.store.backends` (one module each); this module re-exports them."""

from __future__ import annotations

from tessera_pipeline.locations import is_s3, s3_client, s3_storage_options
from tessera_pipeline.store import backends
from tessera_pipeline.store.backends import *  # noqa: F403 - a re-export shim

__all__ = [*backends.__all__, "is_s3", "s3_client", "s3_storage_options"]
