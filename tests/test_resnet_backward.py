"""ResNet's hand-written backward passes (models/resnet.py: the stem ReLU + max-pool, the convolutions' and
BatchNorm's custom VJPs) give autodiff's gradients of the plain `nnx.relu` + `nnx.max_pool`,
`lax.conv_general_dilated` and `nnx.BatchNorm`, with the same forward values.

Integer-valued inputs and cotangents keep every product and partial sum exact in float32, so there the
gradients must be bitwise equal whatever the summation order; that also pins down which of several tied
maxima receives a window's gradient. Random floats then check the same to rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from navee_jax.models.resnet import BatchNorm, conv_general_dilated, relu_max_pool_3x3_s2, resnet18
from navee_jax.train.sharding import make_mesh
from navee_jax.train.step import CPU_COMPILER_OPTIONS, compiler_options

DN = ("NHWC", "HWIO", "NHWC")


def _reference_pool(x):
    return nnx.max_pool(nnx.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _vjp(f, *args, cotangent):
    out, pullback = jax.vjp(f, *args)
    return out, pullback(cotangent)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 2), (1, 1, 1, 1), (3, 12, 5, 4)])
@pytest.mark.parametrize("data", ["ties", "float"])
def test_max_pool_matches_autodiff_of_reduce_window(shape, data):
    rng = np.random.default_rng(sum(shape))
    if data == "ties":  # few distinct values after ReLU: most windows hold several equal maxima
        x = rng.integers(-2, 3, shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    out_shape = _reference_pool(jnp.asarray(x)).shape
    g = rng.integers(-4, 5, out_shape).astype(np.float32)
    want, (want_dx,) = _vjp(_reference_pool, jnp.asarray(x), cotangent=g)
    got, (got_dx,) = _vjp(relu_max_pool_3x3_s2, jnp.asarray(x), cotangent=g)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_dx, want_dx)  # integer sums: exact, so ties route identically


CONVS = [  # (kernel, stride, padding, cin, cout, spatial): ResNet's kinds, incl. both input-gradient paths
    (3, 1, 1, 4, 6, 9),   # stride 1: autodiff's input gradient
    (3, 2, 1, 4, 6, 9),   # stride 2: matmul + col2im
    (1, 2, 0, 4, 6, 8),   # the downsample projection
    (7, 2, 3, 3, 5, 16),  # the stem
    (3, 1, 1, 8, 64, 2),  # fewer output pixels (batch included) than channels: matmul + col2im
]


@pytest.mark.parametrize("k,stride,pad,cin,cout,size", CONVS)
@pytest.mark.parametrize("data", ["integers", "float"])
def test_conv_vjp_matches_autodiff_of_lax_conv(k, stride, pad, cin, cout, size, data):
    rng = np.random.default_rng(k * 100 + stride * 10 + cout)
    draw = ((lambda s: rng.integers(-2, 3, s).astype(np.float32)) if data == "integers"
            else (lambda s: rng.standard_normal(s).astype(np.float32)))
    x, kernel = jnp.asarray(draw((2, size, size, cin))), jnp.asarray(draw((k, k, cin, cout)))
    padding = ((pad, pad), (pad, pad))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=DN)

    def ours(x, kernel):
        return conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=DN)

    g = jnp.asarray(draw(reference(x, kernel).shape))
    want, want_grads = _vjp(reference, x, kernel, cotangent=g)
    got, got_grads = _vjp(ours, x, kernel, cotangent=g)
    np.testing.assert_array_equal(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads):
        if data == "integers":
            np.testing.assert_array_equal(got_grad, want_grad)
        else:
            np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5 * float(jnp.abs(want_grad).max()))


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (32, 14, 14, 16), (16, 5)])
def test_batch_norm_matches_nnx_batch_norm(shape):
    """Train mode: the same output and running statistics bit for bit, gradients to rounding; eval mode
    (and anything else) is nnx.BatchNorm's own code."""
    rng = np.random.default_rng(len(shape) * 10 + shape[-1])
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ours, plain = (cls(shape[-1], momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0)) for cls in (BatchNorm, nnx.BatchNorm))
    for bn in (ours, plain):
        bn.scale[...] = jnp.asarray(rng.standard_normal(shape[-1:]) if bn is ours else ours.scale[...], jnp.float32)
        bn.bias[...] = jnp.asarray(rng.standard_normal(shape[-1:]) if bn is ours else ours.bias[...], jnp.float32)

    @nnx.jit
    def train(bn, x):
        (out, (d_x, d_bn)) = nnx.value_and_grad(lambda x, bn: jnp.vdot(bn(x), g), argnums=(0, 1))(x, bn)
        return out, d_x, d_bn, bn.mean[...], bn.var[...]

    got, want = train(ours, x), train(plain, x)
    for i in (0, 3, 4):
        np.testing.assert_array_equal(got[i], want[i])
    for got_grad, want_grad in zip(jax.tree.leaves(got[1:3]), jax.tree.leaves(want[1:3])):
        np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-5 * float(jnp.abs(want_grad).max()))
    ours.eval(), plain.eval()
    np.testing.assert_array_equal(nnx.jit(lambda bn, x: bn(x))(ours, x), nnx.jit(lambda bn, x: bn(x))(plain, x))


def test_resnet_gradient_matches_plain_autodiff(monkeypatch):
    """The whole network's gradient with the custom backward passes equals autodiff of the same network
    built from `nnx.max_pool`, plain `lax` convolutions and `nnx.BatchNorm` (same weights), to float
    rounding (train-mode BatchNorm over few pixels amplifies rounding: 1e-4 of each gradient's largest
    entry)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)

    def gradients():
        model = resnet18(width=8, rngs=nnx.Rngs(0), num_classes=5)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            # train mode (batch statistics); fresh BatchStat variables for this trace
            out = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))(x)
            return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size)

        return jax.jit(jax.grad(loss))(params)

    ours = gradients()
    import navee_jax.models.resnet as resnet

    monkeypatch.setattr(resnet, "relu_max_pool_3x3_s2", _reference_pool)
    monkeypatch.setattr(resnet, "conv_general_dilated", jax.lax.conv_general_dilated)
    monkeypatch.setattr(resnet, "BatchNorm", nnx.BatchNorm)
    plain = gradients()
    for path, want in jax.tree_util.tree_leaves_with_path(plain):
        got = dict(jax.tree_util.tree_leaves_with_path(ours))[path]
        scale = float(jnp.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))


def test_cpu_mesh_gets_eigen_convolutions_unless_xla_flags_choose(monkeypatch):
    mesh = make_mesh()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compiler_options(mesh) == CPU_COMPILER_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert compiler_options(mesh) == {}
