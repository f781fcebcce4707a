"""Processors injected into run workers by the tests (`WorkerSpec.processor = "run_faults:..."`).

They wrap the real encode path and add one fault, once: a crash of the actor process mid-tile, or a
hang that only the driver's per-tile time limit ends. A flag file makes "once" hold across restarts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tessera_pipeline.run.worker import EncodeProcessor, WorkerSpec


class _OnceProcessor(EncodeProcessor):
    """The real processor plus a fault on `tile`, fired the first time only (flag file)."""

    def __init__(self, spec: WorkerSpec, checkpoint_blob: bytes, *, tile: str, flag: str, delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint_blob, delay_s=delay_s)
        self.fault_tile = tile
        self.flag = Path(flag)

    def _fire(self, name: str) -> bool:
        if name != self.fault_tile or self.flag.exists():
            return False
        self.flag.write_text(f"{os.getpid()}\n")
        return True


class CrashOnce(_OnceProcessor):
    """Kills its own process in the middle of encoding `tile` (as the OOM killer or a segfault would)."""

    def encode(self, fetched: Any) -> Any:
        if self._fire(fetched[0].name):
            os._exit(137)
        return super().encode(fetched)


class HangOnce(_OnceProcessor):
    """Hangs (for an hour) while encoding `tile`, as a stuck read would."""

    def encode(self, fetched: Any) -> Any:
        if self._fire(fetched[0].name):
            time.sleep(3600)
        return super().encode(fetched)


class NeverStarts(EncodeProcessor):
    """A worker whose set-up always fails, as on a node whose driver or install is broken."""

    def __init__(self, spec: WorkerSpec, checkpoint_blob: bytes, **_: Any) -> None:
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
