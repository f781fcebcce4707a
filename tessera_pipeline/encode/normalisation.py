"""Upstream's normalisation statistics: z = (x - mean) / (std + 1e-9) on raw DN; DOY never normalised.

v1.0 uses one S2 set and one S1 set shared by both orbits; v1.1 has per-source (mpc/aws) sets with
separate ascending and descending S1 statistics. The source must match the checkpoint's training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DataSource = Literal["mpc", "aws"]
EPS = 1e-9


@dataclass(frozen=True)
class NormStats:
    """Per-band means and standard deviations of one model version / data source."""

    s2_mean: np.ndarray
    s2_std: np.ndarray
    s1a_mean: np.ndarray
    s1a_std: np.ndarray
    s1d_mean: np.ndarray
    s1d_std: np.ndarray


def _stats(s2m: list[float], s2s: list[float], s1am: list[float], s1as: list[float], s1dm: list[float], s1ds: list[float]) -> NormStats:
    arr = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731 - tiny local constructor
    return NormStats(arr(s2m), arr(s2s), arr(s1am), arr(s1as), arr(s1dm), arr(s1ds))


_V1_0_S1_MEAN = [5484.0407, 3003.7812]
_V1_0_S1_STD = [1871.2334, 1726.0670]

V1_0 = _stats(
    [1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083, 2068.3044, 2685.0845, 2931.5889, 2514.6928, 1899.4922],
    [1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543, 1888.7862, 1736.3090, 1715.8104, 1514.5199, 1398.4779],
    _V1_0_S1_MEAN, _V1_0_S1_STD, _V1_0_S1_MEAN, _V1_0_S1_STD,
)

V1_1: dict[str, NormStats] = {
    "mpc": _stats(
        [2683.4553, 2223.3630, 2432.0950, 3633.1970, 3602.1755, 3006.4324, 3400.2710, 3515.6392, 2456.9163, 1983.8783],
        [2739.5217, 2846.2993, 2690.8250, 2290.0439, 2088.8970, 2673.1106, 2381.4521, 2229.5225, 1601.0942, 1495.3545],
        [5588.3291, 3025.6270], [1713.4646, 1693.0471],
        [5552.9683, 2955.0520], [1685.5857, 1677.6414],
    ),
    "aws": _stats(
        [2793.6589, 2356.7776, 2551.0496, 3741.9229, 3713.7844, 3120.1997, 3516.3342, 3637.0342, 2501.0283, 2038.1504],
        [2810.0093, 2933.8835, 2755.6360, 2344.5027, 2145.7986, 2743.9019, 2438.8601, 2286.5977, 1680.7367, 1585.5529],
        [5697.0859, 2838.6687], [1671.3737, 1789.4116],
        [5759.1367, 2873.2854], [1583.2858, 1747.8390],
    ),
}

