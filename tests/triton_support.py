"""Running the Triton kernels on a CPU: Triton's interpreter, with its float downcasts rounded as a GPU rounds them.

Triton 3.x's interpreter truncates float32 -> bfloat16/float16 casts (a GPU rounds to nearest even), so
without this a kernel that matches torch bit for bit on a GPU would seem to differ on the CPU. The
patch rounds through torch, which rounds to nearest even like the hardware.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch


@contextlib.contextmanager
def interpreted_triton() -> Iterator[None]:
    """Round-to-nearest-even downcasts in the interpreter for the duration (TRITON_INTERPRET=1 is set by conftest.py)."""
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_fp_trunc

    def rounded(self: Any, src: Any, dst_type: Any) -> Any:
        dst = dst_type.scalar
        if src.dtype.scalar == tl.float32 and dst in (tl.bfloat16, tl.float16):
            t = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16 if dst == tl.bfloat16 else torch.float16)
            data = t.view(torch.int16).numpy().view(np.uint16) if dst == tl.bfloat16 else t.numpy()
            return interpreter.TensorHandle(data, dst)
        return original(self, src, dst_type)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter.InterpreterBuilder, "create_fp_trunc", rounded)
        yield

