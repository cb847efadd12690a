"""How far the expanded squared distance |q|^2 + |g|^2 - 2 q.g, computed in float32, can be from a direct one.

The expansion costs one matrix multiply, direct differences three vector operations per coordinate, so exact
searches (`navee_jax.recognize.search`, `navee_jax.evaluate.nearest`) rank candidates by the expansion and
settle anything closer than this bound on direct distances.
"""

from __future__ import annotations

import numpy as np


def _gamma(n: int, unit_roundoff: float) -> float:
    """The classic bound n u / (1 - n u) on the relative error of an n-term float sum or dot product."""
    return n * unit_roundoff / (1 - n * unit_roundoff)


def expansion_error_bound(query_sq: np.ndarray, max_row_sq: float, dim: int,
                          direct: type = np.float32) -> np.ndarray:
    """An upper bound, per query (|q|^2 given, float64), on |expanded float32 - direct| squared distance,
    where the direct distance sums squared differences in `direct` precision (float32 or float64).

    With n = |q|^2 + |g|^2: the two norms and twice the dot product are off by at most gamma_d n in all (any
    summation order, FMA or not); the sum of the norms and the final difference add two roundings of at most
    2 eps n (bounded by 4 eps n); the direct distance is within gamma_{d+1} (|q| + |g|)^2 of the exact one.
    """
    eps32 = float(np.finfo(np.float32).eps) / 2
    scale = query_sq + max_row_sq
    direct_error = _gamma(dim + 1, float(np.finfo(direct).eps) / 2) * (np.sqrt(query_sq) + np.sqrt(max_row_sq)) ** 2
    return (2 * _gamma(dim, eps32) + 4 * eps32) * scale + direct_error
