"""PyTorch's bicubic resizing (`F.interpolate(mode="bicubic", align_corners=False)`, with or without
`antialias`) as matrices, so that position embeddings trained at one grid are resized to another exactly as the
`transformers` models do it (CLIP, SigLIP and DINOv2 without antialiasing; DINOv2 with registers with it).

The two modes are different kernels, not one kernel with a switch: plain bicubic is Keys' cubic with a = -0.75 on
the 4 nearest source samples, edge samples repeated; antialiased bicubic is a = -0.5 over a support widened by
the downscaling factor, its weights renormalised where the support leaves the image (as PIL does).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 weights: output sample i = sum_j W[i, j] * input sample j, along one axis."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    centres = (np.arange(n_out) + 0.5) * scale
    if not antialias:
        for i, c in enumerate(centres - 0.5):
            base = math.floor(c)
            for j in range(base - 1, base + 3):
                w[i, min(max(j, 0), n_in - 1)] += _cubic(np.asarray(c - j), -0.75)
        return w
    support = 2.0 * max(scale, 1.0)
    stretch = max(scale, 1.0)
    for i, c in enumerate(centres):
        lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
        j = np.arange(lo, hi)
        weights = _cubic((j + 0.5 - c) / stretch, -0.5)
        w[i, lo:hi] = weights / weights.sum()
    return w


def resize_grid(grid: jax.Array, height: int, width: int, antialias: bool = False) -> jax.Array:
    """(H, W, D) -> (height, width, D) by separable bicubic resizing, computed in float32."""
    h, w = grid.shape[:2]
    if (h, w) == (height, width):
        return grid
    rows = jnp.asarray(bicubic_matrix(h, height, antialias), jnp.float32)
    cols = jnp.asarray(bicubic_matrix(w, width, antialias), jnp.float32)
    out = jnp.einsum("ih,hwd,jw->ijd", rows, grid.astype(jnp.float32), cols, precision=jax.lax.Precision.HIGHEST)
    return out.astype(grid.dtype)
