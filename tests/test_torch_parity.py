"""Converted torchvision models compute what torchvision computes.

Each torchvision model is randomly initialised (seeded), with its BatchNorm affine parameters and
running statistics randomised too so that a wrong mapping of any of them shows, and compared in
eval mode on the same random input (NCHW for torch, NHWC for Flax). Relative error is
max|flax - torch| / max|torch| over the whole output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="parity tests need PyTorch: pip install 'navee-jax[torch]'")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision: pip install 'navee-jax[torch]'")

from navee_jax.models.convert import load_torch_state_dict, torch_name  # noqa: E402
from navee_jax.models.cpu_tuned import tune_for_cpu  # noqa: E402
from navee_jax.models.resnet import resnet18, resnet50  # noqa: E402
from navee_jax.models.vgg import adaptive_avg_pool, vgg16, vgg16_bn  # noqa: E402

MAX_RELATIVE_ERROR = 1e-4


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _torch_model(name: str) -> "torch.nn.Module":
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _state_dict(model: "torch.nn.Module") -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _converted(factory, state_dict: dict[str, np.ndarray], **kwargs) -> nnx.Module:
    model = nnx.eval_shape(lambda: factory(rngs=nnx.Rngs(0), **kwargs))  # weights come from torch
    load_torch_state_dict(model, state_dict)
    model.eval()
    return model


def _inputs(size: int) -> tuple["torch.Tensor", np.ndarray]:
    x = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
    return torch.from_numpy(x), x.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name,factory", [("resnet18", resnet18), ("resnet50", resnet50)])
def test_resnet_matches_torchvision(name, factory):
    torch_model = _torch_model(name)
    x_torch, x_flax = _inputs(64)
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    model = _converted(factory, _state_dict(torch_model), num_classes=1000)
    error = relative_error(model(x_flax), expected)
    print(f"{name} logits: relative error {error:.2e}")
    assert error <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("cpu_tuned", [False, True], ids=["plain", "cpu_tuned"])
def test_resnet18_gradients_match_torchvision(cpu_tuned):
    """Backward pass too, of the plain model and of the CPU-tuned one (models/cpu_tuned.py writes its own for
    the convolutions and the stem max-pool): the gradients of sum(logits * c) for a random c, w.r.t. the
    input and every parameter, in eval mode."""
    torch_model = _torch_model("resnet18")
    x_torch, x_flax = _inputs(64)
    cotangent = np.random.default_rng(1).standard_normal((2, 1000)).astype(np.float32)
    x_torch.requires_grad_(True)
    (torch_model(x_torch) * torch.from_numpy(cotangent)).sum().backward()
    model = _converted(resnet18, _state_dict(torch_model), num_classes=1000)
    if cpu_tuned:
        tune_for_cpu(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def objective(params, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) * cotangent)

    param_grads, x_grad = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, x_flax)
    errors = {"input": relative_error(np.asarray(x_grad).transpose(0, 3, 1, 2), x_torch.grad.numpy())}
    torch_params = dict(torch_model.named_parameters())
    for path, grad in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(param_grads)):
        name = torch_name(tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path))
        grad = np.asarray(grad)
        grad = grad.transpose(3, 2, 0, 1) if grad.ndim == 4 else grad.T if grad.ndim == 2 else grad
        errors[name] = relative_error(grad, torch_params[name].grad.numpy())
    assert len(errors) == 1 + len(torch_params)
    worst = max(errors, key=errors.get)
    path = "cpu-tuned" if cpu_tuned else "plain"
    print(f"resnet18 gradients ({path}): worst relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= MAX_RELATIVE_ERROR, worst


def test_headless_resnet_skips_fc_and_matches_pooled_features():
    torch_model = _torch_model("resnet18")
    x_torch, x_flax = _inputs(64)
    torch_model.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = torch_model(x_torch).numpy()
    state_dict = _state_dict(_torch_model("resnet18"))  # with fc: ignored by the headless backbone
    assert relative_error(_converted(resnet18, state_dict)(x_flax), expected) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 14])
def test_adaptive_avg_pool_matches_torch(size):
    x = np.random.default_rng(size).standard_normal((2, 4, size, size + 3), dtype=np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy()
    actual = adaptive_avg_pool(x.transpose(0, 2, 3, 1), (7, 7))
    np.testing.assert_allclose(np.asarray(actual).transpose(0, 3, 1, 2), expected, rtol=1e-6, atol=1e-6)


# 32x32 leaves 1x1 before the adaptive pool (upsampled to 7x7), 64x64 leaves 2x2 (overlapping windows).
@pytest.mark.parametrize("name,factory,size", [("vgg16", vgg16, 32), ("vgg16_bn", vgg16_bn, 64)])
def test_vgg_matches_torchvision_at_every_truncation(name, factory, size):
    torch_model = _torch_model(name)
    state_dict = _state_dict(torch_model)
    x_torch, x_flax = _inputs(size)
    with torch.no_grad():
        pooled = torch.flatten(torch_model.avgpool(torch_model.features(x_torch)), 1)
        expected = {n: torch_model.classifier[:7 - n](pooled).numpy() for n in (0, 1, 3, 4, 7)}
    # n=7 is the pooled conv map flattened: torch's order is (C, 7, 7), Flax's (7, 7, C).
    expected[7] = expected[7].reshape(2, -1, 7, 7).transpose(0, 2, 3, 1).reshape(2, -1)
    for n, want in expected.items():
        model = _converted(factory, state_dict, remove_top_layers=n)
        assert model.out_features == want.shape[1]
        error = relative_error(model(x_flax), want)
        print(f"{name} remove_top_layers={n}: relative error {error:.2e}")
        assert error <= MAX_RELATIVE_ERROR, n
        del model
