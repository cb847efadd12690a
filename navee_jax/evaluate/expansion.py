"""How far the expanded squared distance |q|^2 + |g|^2 - 2 q.g can be from the direct one, in float32.

The expansion costs one matrix multiply, direct differences three vector operations per coordinate, so exact
searches (`navee_jax.recognize.search`, `navee_jax.evaluate.nearest`) rank candidates by the expansion and
settle anything closer than this bound on direct distances.
"""

from __future__ import annotations

import numpy as np

_EPS32 = 2.0 ** -24  # float32 unit roundoff


def expansion_error_bound(query_sq: np.ndarray, max_row_sq: float, dim: int) -> np.ndarray:
    """An upper bound on |expanded - direct| squared distance in float32 for each query (|q|^2 given, float64),
    doubled for safety: dot product and norms (gamma_d (|q|^2 + |g|^2) each, any summation order), three
    roundings of the sums, and the direct computation's own relative error (gamma_{d+1} (|q| + |g|)^2),
    which also covers the distance to the exact (real-number) value."""
    gamma = dim * _EPS32 / (1 - dim * _EPS32)
    gamma1 = (dim + 1) * _EPS32 / (1 - (dim + 1) * _EPS32)
    scale = query_sq + max_row_sq
    return 2.0 * ((3 * gamma + 6 * _EPS32) * scale + gamma1 * (np.sqrt(query_sq) + np.sqrt(max_row_sq)) ** 2)


def expansion_error_vs_float64(query_sq: np.ndarray, max_row_sq: float, dim: int) -> np.ndarray:
    """An upper bound on |expanded float32 - direct float64| squared distance for each query (|q|^2 given).

    With n = |q|^2 + |g|^2: both norms and the dot product (any summation order, FMA or not) are off by at
    most gamma_d n in all, the sum of the norms and the final difference add 3 roundings of at most eps n
    (bounded by 4 eps n); the float64 direct distance is within gamma64_{d+1} (|q| + |g|)^2 of the exact
    one. Unlike `expansion_error_bound`, nothing is doubled: the bound is rigorous as it stands.
    """
    gamma = dim * _EPS32 / (1 - dim * _EPS32)
    gamma64 = (dim + 1) * 2.0 ** -53 / (1 - (dim + 1) * 2.0 ** -53)
    scale = query_sq + max_row_sq
    return (2 * gamma + 4 * _EPS32) * scale + gamma64 * (np.sqrt(query_sq) + np.sqrt(max_row_sq)) ** 2
