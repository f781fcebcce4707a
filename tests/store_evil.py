"""A 'processor' an attacker could name in a store's run record: importing it leaves a flag file (it must never run)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

FLAG = Path(tempfile.gettempdir()) / "tessera_store_evil.flag"
FLAG.write_text("imported\n")


class Boom:
    """Would run anything on every worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FLAG.write_text("ran\n")
        raise RuntimeError("attacker code ran")
