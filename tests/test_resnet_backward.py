"""ResNet's hand-written XLA:CPU backward passes (models/cpu_tuned.py: the stem ReLU + max-pool, the
convolutions' and BatchNorm's custom VJPs) give autodiff's gradients of the plain model's `nnx.relu` +
`nnx.max_pool`, `lax.conv_general_dilated` and `nnx.BatchNorm` (models/resnet.py), with the same forward
values; and the gate (navee_jax.backend.cpu_tuned) installs them on CPU meshes only.

Integer-valued inputs and cotangents keep every product and partial sum exact in float32, so there the
gradients must be bitwise equal whatever the summation order; that also pins down which of several tied
maxima receives a window's gradient. Random floats then check the same to rounding.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from navee_jax.backend import CPU_COMPILER_OPTIONS, compiler_options, cpu_tuned
from navee_jax.models import build_model
from navee_jax.models.cpu_tuned import batch_norm, conv_general_dilated, relu_max_pool_3x3_s2, tune_for_cpu
from navee_jax.models.resnet import BatchNorm, relu_max_pool, resnet18
from navee_jax.sharding import make_mesh

DN = ("NHWC", "HWIO", "NHWC")


def _reference_pool(x):
    return nnx.max_pool(nnx.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def test_plain_stem_pool_is_relu_then_max_pool():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 9, 3)), jnp.float32)
    np.testing.assert_array_equal(relu_max_pool(x), _reference_pool(x))


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
    ours.call_fn = batch_norm  # what tune_for_cpu installs
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


def _tiny_resnet_outputs_and_gradients(tuned: bool):
    """Train-mode ResNet-18 (width 8, 32x32, batch 4): (logits, updated BatchNorm statistics, gradients
    w.r.t. the parameters, gradient w.r.t. the input)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
    model = resnet18(width=8, rngs=nnx.Rngs(0), num_classes=5)
    if tuned:
        tune_for_cpu(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
        # train mode (batch statistics); fresh BatchStat variables for this trace
        model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
        out = model(x)
        return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size), (
            out, nnx.state(model, nnx.BatchStat))

    (_, (out, stats)), (d_params, d_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return out, stats, d_params, d_x


def test_tuned_resnet_matches_plain_resnet():
    """The whole network with the CPU backward passes (`tune_for_cpu`) against the plain one (`nnx.max_pool`,
    plain `lax` convolutions, `nnx.BatchNorm`; same weights): outputs and BatchNorm statistics to float
    rounding, gradients too (train-mode BatchNorm over few pixels amplifies rounding: 1e-4 of each
    gradient's largest entry)."""
    got, want = _tiny_resnet_outputs_and_gradients(True), _tiny_resnet_outputs_and_gradients(False)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * float(jnp.abs(want[0]).max()))
    for name, got_tree, want_tree in (("stats", got[1], want[1]), ("d_params", got[2], want[2]),
                                      ("d_x", got[3], want[3])):
        got_leaves = dict(jax.tree_util.tree_leaves_with_path(got_tree))
        for path, want_leaf in jax.tree_util.tree_leaves_with_path(want_tree):
            scale = float(jnp.abs(want_leaf).max()) or 1.0
            np.testing.assert_allclose(got_leaves[path], want_leaf, rtol=0, atol=1e-4 * scale,
                                       err_msg=name + jax.tree_util.keystr(path))


def test_tuning_keeps_parameters_and_state():
    plain = resnet18(width=8, rngs=nnx.Rngs(0))
    tuned = tune_for_cpu(resnet18(width=8, rngs=nnx.Rngs(0)))
    assert jax.tree.structure(nnx.state(tuned)) == jax.tree.structure(nnx.state(plain))
    for a, b in zip(jax.tree.leaves(nnx.state(tuned)), jax.tree.leaves(nnx.state(plain))):
        np.testing.assert_array_equal(a, b)
    assert tuned.stem_pool is relu_max_pool_3x3_s2 and plain.stem_pool is relu_max_pool
    assert tuned.layer2[0].downsample.conv.conv_general_dilated is conv_general_dilated
    assert plain.layer2[0].downsample.conv.conv_general_dilated is jax.lax.conv_general_dilated
    assert tuned.layer1[0].bn2.call_fn is batch_norm and plain.layer1[0].bn2.call_fn is nnx.BatchNorm.__call__


def _fake_mesh(platform: str):
    return types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)], dtype=object))


def test_gate_is_cpu_only_and_off_with_plain_models_env(monkeypatch):
    monkeypatch.delenv("NAVEE_PLAIN_MODELS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert cpu_tuned(make_mesh())
    for platform in ("gpu", "tpu"):
        assert not cpu_tuned(_fake_mesh(platform)) and compiler_options(_fake_mesh(platform)) == {}
    monkeypatch.setenv("NAVEE_PLAIN_MODELS", "1")
    assert not cpu_tuned(make_mesh()) and compiler_options(make_mesh()) == {}
    monkeypatch.setenv("NAVEE_PLAIN_MODELS", "0")
    assert cpu_tuned(make_mesh())


def _primitive_names(jaxpr) -> set[str]:
    """Every primitive in `jaxpr`, the jaxprs nested in its equations (jit, cond, ...) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    names |= _primitive_names(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    names |= _primitive_names(sub)
    return names


@pytest.mark.parametrize("tuned", [False, True])
def test_build_model_uses_custom_vjps_only_when_cpu_tuned(tuned):
    cfg = common.get_config("digits").model
    cfg.width, cfg.embed_dim = 8, 16
    model = build_model(cfg, nnx.Rngs(0), 32, cpu_tuned=tuned)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))(x))

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, jnp.ones((2, 32, 32, 3), jnp.float32))
    custom = {n for n in _primitive_names(jaxpr.jaxpr) if "custom_vjp" in n}
    assert bool(custom) == tuned, custom


def test_cpu_mesh_gets_eigen_convolutions_unless_xla_flags_choose(monkeypatch):
    mesh = make_mesh()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("NAVEE_PLAIN_MODELS", raising=False)
    assert compiler_options(mesh) == CPU_COMPILER_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert compiler_options(mesh) == {}
