"""A stride-1 convolution as shifted slices and one matrix product, for convolutions vmapped over kernels.

MAML vmaps the network over tasks, and after the inner steps every task has its own parameters, so the
convolutions are batched over their *kernels*. JAX lowers a convolution vmapped over its kernel to one
grouped convolution (`feature_group_count` = tasks), which XLA:CPU runs very slowly (a Conv-4 meta-step of 32
tasks took over a minute on 2 cores). Written as `kh * kw` shifted slices of the padded input concatenated
on the channel axis, then one `dot_general` with the (kh * kw * C_in, C_out) kernel, the same convolution
vmaps into a batched matrix product instead, which every backend runs fast; its gradients are slices,
pads and matrix products too. It computes exactly `lax.conv_general_dilated`'s function (tested).

The 2x2 max-pools have the same problem: vmapped, `lax.reduce_window` and its gradient
(`select_and_scatter`) take XLA:CPU's slow generic path, 2x slower than one call per task. `reshape_max_pool`
pools by reshapes and elementwise products instead, which vmap into the same operations with one more batch
axis (docs/maml.md, bench/maml_step.py).

`use_matmul_convs(model)` installs both: the convolution in every `nnx.Conv` of a model (their
`conv_general_dilated` hook) and the pool in every Conv-4 block (their `pool` hook).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from navee_jax.models.conv4 import ConvBlock, max_pool_2x2

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_one(x: Sequence[int] | None) -> bool:
    return x is None or all(v == 1 for v in x)


def shifted_slices_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                        padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                        rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                        feature_group_count: int = 1, precision: Any = None, **_: Any) -> jax.Array:
    """`lax.conv_general_dilated` for NHWC inputs, HWIO kernels, stride 1, explicit padding, no dilation or
    groups (what Conv-4's 3x3 convolutions use); anything else is refused rather than computed wrongly."""
    expected = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    if dimension_numbers is not None and jax.lax.conv_dimension_numbers(
            lhs.shape, rhs.shape, dimension_numbers) != expected:
        raise ValueError(f"shifted_slices_conv handles NHWC / HWIO only, not {dimension_numbers}")
    if (not _is_one(window_strides) or not _is_one(lhs_dilation) or not _is_one(rhs_dilation)
            or feature_group_count != 1 or isinstance(padding, str)):
        raise ValueError("shifted_slices_conv handles stride 1, explicit padding, no dilation and no groups")
    kh, kw, cin, cout = rhs.shape
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    # (N, h, w, kh * kw * C_in), ordered (i, j, c) like the kernel's reshape below
    patches = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


def _max_of_pairs(x: jax.Array) -> jax.Array:
    """(m, 2, c) -> (m, c): the larger of each pair, the first on a tie, as a product with the one-hot of its
    position. Its gradient goes to that position only; the position is computed once in the forward pass.
    (jnp.max's gradient instead compares its input with the maximum again, and XLA may recompute that input
    with other rounding inside a fused backward pass: under jit, 10% of the gradient was lost, measured.)"""
    return jnp.sum(x * jax.nn.one_hot(jnp.argmax(x, axis=1), 2, axis=1, dtype=x.dtype), axis=1)


def reshape_max_pool(x: jax.Array) -> jax.Array:
    """`max_pool_2x2` of NHWC `x` (odd sizes floored, the first maximum of a window takes the gradient), by
    reshapes: the larger of each pair of columns, then of each pair of rows. Every step is a rank-3 array, so
    vmapped it stays rank 4 (jaxlib 0.10.2's YNNPACK reductions go wrong on rank 7: jax-ml/jax#40412)."""
    n, h, w, c = x.shape
    h, w = h // 2, w // 2
    x = _max_of_pairs(x[:, :2 * h, :2 * w].reshape(n * 2 * h * w, 2, c))
    return _max_of_pairs(x.reshape(n * h, 2, w * c)).reshape(n, h, w, c)


def use_matmul_convs(model: nnx.Module) -> nnx.Module:
    """Every `nnx.Conv` in `model` computes with `shifted_slices_conv` and every Conv-4 block's 2x2 pool is
    `reshape_max_pool` (same functions, same parameters; a `global_pool` block keeps its own)."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = shifted_slices_conv
        if isinstance(module, ConvBlock) and module.pool is max_pool_2x2:
            module.pool = reshape_max_pool
    return model
