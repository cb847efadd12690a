"""ResNet-18 / ResNet-50 with torchvision's topology (v1.5: stride on the 3x3 conv), in Flax NNX, NHWC.

Attribute names follow torchvision's state_dict (conv1, bn1, layer1.0.downsample, fc, ...) so that
converted ImageNet weights map one to one (see navee_jax.models.convert).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BN scale 1, bias 0.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


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


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = k // 2  # explicit symmetric padding, as torch does (SAME would pad asymmetrically at stride 2)
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=_conv_init, conv_general_dilated=conv_general_dilated, rngs=rngs)


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


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm with the same values and a hand-written backward pass for train mode on float32
    NHWC activations (anything else goes to nnx.BatchNorm): it neither stores x - mean for the backward
    pass nor writes out the gradient times the scale to sum it (docs/train_step.md)."""

    def __call__(self, x, use_running_average=None, *, mask=None):
        running = self.use_running_average if use_running_average is None else use_running_average
        scale, bias = (None if v is None else v[...] for v in (self.scale, self.bias))
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        if (running is not False or mask is not None or self.axis_name is not None or scale is None or bias is None
                or self.axis not in (-1, x.ndim - 1) or not self.use_fast_variance or x.dtype != jnp.float32
                or self.dtype not in (None, jnp.float32)):
            return super().__call__(x, use_running_average, mask=mask)
        # flax's _compute_stats (fast variance), then its running-average update
        axes = tuple(range(x.ndim - 1))
        mean, mean2 = x.mean(axes), jax.lax.square(x).mean(axes)
        var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
        self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
        return _batch_norm_apply(x, mean, var, scale, bias, self.epsilon)


def _bn(c: int, rngs: nnx.Rngs) -> BatchNorm:
    # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
    return BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _torch_linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
    """nn.Linear's default initialisation, U(-1/sqrt(cin), 1/sqrt(cin)) for weight and bias, so a
    freshly built classifier trains like torchvision's."""
    bound = 1.0 / math.sqrt(cin)
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                      bias_init=lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
                      rngs=rngs)


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


class Downsample(nnx.Module):
    """The projection shortcut; .conv / .bn are torchvision's downsample.0 / downsample.1."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, stride, rngs)
        self.bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); output channels = planes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, planes, 3, stride, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, rngs)
        self.bn2 = _bn(planes, rngs)
        self.downsample = Downsample(cin, planes, stride, rngs) if stride != 1 or cin != planes else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (carrying the stride, torchvision v1.5), 1x1 expand; output channels = 4 * planes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, 1, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, rngs)
        self.bn2 = _bn(planes, rngs)
        self.conv3 = _conv(planes, cout, 1, 1, rngs)
        self.bn3 = _bn(cout, rngs)
        self.downsample = Downsample(cin, cout, stride, rngs) if stride != 1 or cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        return nnx.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNet(nnx.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool), four stages, global average pool, optional classifier.

    Returns (N, out_features): the pooled features (8 * width * block.expansion) when
    `num_classes` is 0, which is how few-shot embeddings use it, or the logits of an `fc` layer
    when `num_classes` > 0, which makes the full torchvision model (e.g. 1000 ImageNet classes)
    and its converted weights comparable.
    """

    def __init__(self, blocks_per_stage: tuple[int, ...], width: int, rngs: nnx.Rngs, in_channels: int = 3, *,
                 block: type[BasicBlock] | type[Bottleneck] = BasicBlock, num_classes: int = 0):
        self.conv1 = _conv(in_channels, width, 7, 2, rngs)
        self.bn1 = _bn(width, rngs)
        cin = width
        for s, n in enumerate(blocks_per_stage):
            planes = width * 2**s
            blocks = []
            for b in range(n):
                blocks.append(block(cin, planes, 2 if (b == 0 and s > 0) else 1, rngs))
                cin = planes * block.expansion
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.num_stages = len(blocks_per_stage)
        self.fc = _torch_linear(cin, num_classes, rngs) if num_classes > 0 else None
        self.out_features = num_classes if num_classes > 0 else cin

    def __call__(self, x: jax.Array) -> jax.Array:
        x = relu_max_pool_3x3_s2(self.bn1(self.conv1(x)))
        for s in range(self.num_stages):
            for block in getattr(self, f"layer{s + 1}"):
                x = block(x)
        x = x.mean(axis=(1, 2))
        return x if self.fc is None else self.fc(x)


def resnet18(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 0) -> ResNet:
    """torchvision resnet18 (`width` 64 is the standard network), headless unless `num_classes` > 0."""
    return ResNet((2, 2, 2, 2), width, rngs, in_channels, num_classes=num_classes)


def resnet50(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 0) -> ResNet:
    """torchvision resnet50 (`width` 64 is the standard network: 2048 features), headless unless
    `num_classes` > 0."""
    return ResNet((3, 4, 6, 3), width, rngs, in_channels, block=Bottleneck, num_classes=num_classes)
