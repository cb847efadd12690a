"""Hand-written backward passes for ResNet on XLA:CPU: the convolutions (input gradients by GEMM +
col2im, kernel gradients from a materialised input), train-mode BatchNorm and the stem ReLU + max-pool.

They compute the plain model's function (models/resnet.py: `lax` convolutions, nnx.BatchNorm, nnx.relu +
nnx.max_pool) with the same forward values and autodiff's gradients up to float summation order
(tests/test_resnet_backward.py), and they were tuned on XLA:CPU only (docs/train_step.md): on GPU / TPU
they would stand between the model and cuDNN / XLA's fusions. So they are not part of the model:
`tune_for_cpu(model)` installs them into a model's ResNet parts in place (the same parameters and
state; only static functions of the graphdef change), which `build_model(..., cpu_tuned=True)` does
where `navee_jax.backend.cpu_tuned(mesh)` says so.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from navee_jax.models.resnet import BatchNorm, ResNet


def _materialized(x: jax.Array) -> jax.Array:
    """`x` itself, read from its own buffer by every user after this point.

    XLA fuses cheap elementwise producers (BatchNorm, ReLU, the residual add) into each consumer,
    including the transposes feeding a convolution's kernel gradient, which then re-evaluate them in
    transposed, cache-hostile order. A conditional on a data-dependent predicate is opaque to fusion
    (optimization_barrier is not: XLA:CPU removes it before fusing); both branches return `x`
    unchanged (`x * 1` is exact, NaN included), so only where the values are read from changes.
    """
    first = x.reshape(-1)[0]
    unlikely = jnp.isnan(first) if jnp.issubdtype(x.dtype, jnp.floating) else first == jnp.iinfo(x.dtype).min
    return jax.lax.cond(unlikely, lambda v: v * jnp.ones((), v.dtype), lambda v: v, x)


# ------------------------------------------------------------------------------------ convolutions


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nhwc(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple, dimension_numbers,
               precision) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dimension_numbers,
                                        precision=precision)


def _conv_nhwc_fwd(x, kernel, strides, padding, dimension_numbers, precision):
    return _conv_nhwc(x, kernel, strides, padding, dimension_numbers, precision), (x, kernel)


# Input gradients of stride-1 convolutions go through `_input_grad_by_gemm` when the output has at most
# this many pixels (batch included) per output channel.
_GEMM_INPUT_GRAD_ROWS_PER_CHANNEL = 1


def _input_grad_by_gemm(g: jax.Array, kernel: jax.Array, x_shape: tuple, strides: tuple, padding: tuple,
                        precision) -> jax.Array:
    """d(conv)/d(input) for NHWC / HWIO as one matmul g @ kernel^T (every output pixel's contribution
    to its k x k input window) and a col2im sum of the k * k shifted, stride-dilated slices."""
    n, ho, wo, cout = g.shape
    kh, kw, cin, _ = kernel.shape
    (plo, phi), (qlo, qhi) = padding
    hp, wp = x_shape[1] + plo + phi, x_shape[2] + qlo + qhi
    sh, sw = strides
    cols = jax.lax.dot_general(g.reshape(-1, cout), kernel.reshape(-1, cout), (((1,), (1,)), ((), ())),
                               precision=precision, preferred_element_type=jnp.float32)
    cols = cols.reshape(n, ho, wo, kh, kw, cin)
    zero, grad = jnp.zeros((), cols.dtype), None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.pad(cols[:, :, :, i, j, :], zero, ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
                                                            (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
            grad = tap if grad is None else grad + tap
    return grad[:, plo:plo + x_shape[1], qlo:qlo + x_shape[2], :].astype(g.dtype)


def _conv_nhwc_bwd(strides, padding, dimension_numbers, precision, res, g):
    x, kernel = res

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dimension_numbers,
                                            precision=precision)

    dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, dimension_numbers)
    n, ho, wo, cout = g.shape if dn.out_spec == (0, 3, 1, 2) else (0, 0, 0, 0)
    # A stride-2 input gradient is otherwise a convolution over a zero-dilated input (4x the work), and
    # where the kernel outweighs the activations (ResNet's last stage) its flipped, transposed copy
    # costs more than the matmul: docs/train_step.md.
    by_gemm = (dn.lhs_spec == (0, 3, 1, 2) and dn.rhs_spec == (3, 2, 0, 1) and dn.out_spec == (0, 3, 1, 2)
               and (max(strides) > 1 or n * ho * wo <= _GEMM_INPUT_GRAD_ROWS_PER_CHANNEL * cout))
    # The kernel gradient is autodiff's convolution, its input materialised first (`_materialized`).
    if by_gemm:
        _, vjp = jax.vjp(lambda k: conv(_materialized(x), k), kernel)
        return _input_grad_by_gemm(g, kernel, x.shape, strides, padding, precision), vjp(g)[0]
    _, vjp = jax.vjp(conv, _materialized(x), kernel)
    return vjp(g)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """jax.lax.conv_general_dilated for nnx.Conv: the plain convolutions of these networks get the
    backward pass of `_conv_nhwc` (the same gradients up to float rounding, faster on XLA:CPU:
    docs/train_step.md); anything else goes to lax unchanged."""
    plain = (not isinstance(padding, str) and feature_group_count == 1 and not any(kwargs.values())
             and all(d in (None, 1) or tuple(d) == (1,) * len(d) for d in (lhs_dilation, rhs_dilation)))
    if not plain:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)
    padding = tuple(tuple(p) for p in padding)
    return _conv_nhwc(lhs, rhs, tuple(window_strides), padding, dimension_numbers, precision)


# --------------------------------------------------------------------------------------- BatchNorm


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _batch_norm_apply(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
                      epsilon: float) -> jax.Array:
    # flax's _normalize, op for op, so that the values are the same
    y = x - mean
    mul = jax.lax.rsqrt(var + epsilon)
    mul *= scale
    y *= mul
    y += bias
    return y


def _batch_norm_apply_fwd(x, mean, var, scale, bias, epsilon):
    return _batch_norm_apply(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _batch_norm_apply_bwd(epsilon, res, g):
    x, mean, var, scale = res
    axes = tuple(range(x.ndim - 1))
    mul, mul_vjp = jax.vjp(lambda v, s: jax.lax.rsqrt(v + epsilon) * s, var, scale)
    g_sum = g.sum(axes)
    # Autodiff keeps x - mean from the forward pass (a full-size buffer alive until the backward pass);
    # recomputed here inside the reduction instead. The materialised mean keeps XLA from merging the two.
    d_var, d_scale = mul_vjp((g * (x - _materialized(mean))).sum(axes))
    return g * mul, -(g_sum * mul), d_var, d_scale, g_sum


_batch_norm_apply.defvjp(_batch_norm_apply_fwd, _batch_norm_apply_bwd)


def batch_norm(bn: nnx.BatchNorm, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    """nnx.BatchNorm.__call__ with the same values and a hand-written backward pass for train mode on
    float32 NHWC activations (anything else goes to nnx.BatchNorm): it neither stores x - mean for the
    backward pass nor writes out the gradient times the scale to sum it (docs/train_step.md). Installed
    as resnet.BatchNorm's `call_fn`."""
    running = bn.use_running_average if use_running_average is None else use_running_average
    scale, bias = (None if v is None else v[...] for v in (bn.scale, bn.bias))
    x, scale, bias = bn.promote_dtype((x, scale, bias), dtype=bn.dtype)
    if (running is not False or mask is not None or bn.axis_name is not None or scale is None or bias is None
            or bn.axis not in (-1, x.ndim - 1) or not bn.use_fast_variance or x.dtype != jnp.float32
            or bn.dtype not in (None, jnp.float32)):
        return nnx.BatchNorm.__call__(bn, x, use_running_average, mask=mask)
    # flax's _compute_stats (fast variance), then its running-average update
    axes = tuple(range(x.ndim - 1))
    mean, mean2 = x.mean(axes), jax.lax.square(x).mean(axes)
    var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
    bn.mean[...] = jax.lax.stop_gradient(bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean)
    bn.var[...] = jax.lax.stop_gradient(bn.momentum * bn.var[...] + (1 - bn.momentum) * var)
    return _batch_norm_apply(x, mean, var, scale, bias, bn.epsilon)


# ------------------------------------------------------------------------------ stem ReLU + max-pool


def _pool_windows(x: jax.Array) -> list[jax.Array]:
    """The 9 taps (row-major) of every 3x3 / stride-2 window of NHWC `x` padded by one with -inf."""
    n, h, w, c = x.shape
    ho, wo = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 2 * ho - h), (1, 2 * wo - w), (0, 0)), constant_values=-jnp.inf)
    return [jax.lax.slice(xp, (0, i, j, 0), (n, i + 2 * ho - 1, j + 2 * wo - 1, c), (1, 2, 2, 1))
            for i in range(3) for j in range(3)]


def _pool_forward(x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    taps = _pool_windows(x)
    out = taps[0]
    for t in taps[1:]:
        out = jnp.maximum(out, t)
    return out, taps


@jax.custom_vjp
def relu_max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """The stem's ReLU then torch's MaxPool2d(3, stride=2, padding=1) on NHWC: nnx.relu + nnx.max_pool's
    values, and the gradient going, as in torch and XLA's select-and-scatter, to the first maximum of
    each window (row-major).

    Written out because XLA:CPU lowers reduce_window's gradient (select-and-scatter) to a variadic
    reduce-window over four int32 index arrays plus a scatter: on the (32, 56, 56, 64) stem output of a
    112x112 batch, forward + backward (with the BatchNorm and ReLU before it) take about 100 ms on 2 CPU
    cores that way and about 20 ms this way (docs/train_step.md). The ReLU is inside so that its mask is
    taken on the pooled grid: a window's maximum is positive exactly where the ReLU passed its argmax.
    """
    return _pool_forward(jax.nn.relu(x))[0]


def _max_pool_fwd(x: jax.Array):
    out, taps = _pool_forward(jax.nn.relu(x))
    first = jnp.full(out.shape, 8, jnp.int8)  # index of the first tap holding the maximum
    for k in range(7, -1, -1):
        first = jnp.where(taps[k] == out, jnp.int8(k), first)
    # Materialised, XLA would otherwise recompute it from the padded input for every pixel of the gradient.
    return out, (_materialized(first), out, x.shape)


def _col2im_s2(taps: list[jax.Array], axis: int, size: int) -> jax.Array:
    """Sums the taps at offsets 0, 1, 2 of the stride-2, padding-1 windows along `axis` onto the `size`
    input pixels: pixel 2m gets taps[1][m], pixel 2m + 1 gets taps[0][m + 1] + taps[2][m]."""
    n = taps[0].shape[axis]
    later = jax.lax.pad(taps[0], jnp.zeros((), taps[0].dtype),
                        [(0, 1, 0) if d == axis else (0, 0, 0) for d in range(taps[0].ndim)])
    odd = jax.lax.slice_in_dim(later, 1, n + 1, axis=axis) + taps[2]
    shape = list(odd.shape)
    shape[axis] *= 2
    return jax.lax.slice_in_dim(jnp.stack([taps[1], odd], axis + 1).reshape(shape), 0, size, axis=axis)


def _max_pool_bwd(res, g):
    first, out, (_, h, w, _) = res
    zero = jnp.zeros((), g.dtype)
    g = jnp.where(out > 0, g, zero)
    # Tap (i, j) of window (a, b) is padded-input pixel (2a + i, 2b + j): each tap's share of the gradient,
    # gathered per row and column phase of the input rather than as nine interior-padded copies.
    rows = [_col2im_s2([jnp.where(first == 3 * i + j, g, zero) for j in range(3)], 2, w) for i in range(3)]
    # One pass writes it: with several consumers (the BatchNorm's backward), XLA would split it up.
    return (_materialized(_col2im_s2(rows, 1, h)),)


relu_max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ------------------------------------------------------------------------------------------ tuner


def tune_for_cpu(model: nnx.Module) -> nnx.Module:
    """Installs the XLA:CPU backward passes in every ResNet inside `model` (the model itself included), in
    place, and returns it: its convolutions' `conv_general_dilated`, its BatchNorms' `call_fn` and its
    `stem_pool`. Parameters and state are untouched; other modules (Conv-4, Koch, VGG, the embedding
    head) stay as they are. Tuning a model twice changes nothing."""
    for _, resnet in nnx.iter_graph(model):
        if not isinstance(resnet, ResNet):
            continue
        resnet.stem_pool = relu_max_pool_3x3_s2
        for _, module in nnx.iter_graph(resnet):
            if isinstance(module, nnx.Conv):
                module.conv_general_dilated = conv_general_dilated
            elif isinstance(module, BatchNorm):
                module.call_fn = batch_norm
    return model
