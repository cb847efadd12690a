"""Backbone topologies: parameter counts against torchvision and the papers, output shapes, train/eval modes.

Counts use nnx.eval_shape, which builds the model with shapes only: VGG-16's 138M parameters are
never allocated.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.models.conv4 import conv4
from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.koch import koch
from navee_jax.models.resnet import resnet18, resnet50
from navee_jax.models.vgg import VGG, vgg16, vgg16_bn


def _abstract(make):
    return nnx.eval_shape(make)


def _count(model) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# sum(p.numel() for p in torchvision.models.<name>().parameters())
@pytest.mark.parametrize("factory,kwargs,expected", [
    (resnet18, {"num_classes": 1000}, 11_689_512),
    (resnet50, {"num_classes": 1000}, 25_557_032),
    (resnet50, {}, 25_557_032 - (2048 * 1000 + 1000)),  # headless: the pooled 2048 features
    (vgg16, {}, 138_357_544),
    (vgg16_bn, {}, 138_365_992),
])
def test_parameter_counts_equal_torchvision(factory, kwargs, expected):
    assert _count(_abstract(lambda: factory(rngs=nnx.Rngs(0), **kwargs))) == expected


def test_koch_parameter_count_follows_the_paper():
    convs = ((1, 64, 10), (64, 128, 7), (128, 128, 4), (128, 256, 4))  # (in, filters, kernel side)
    conv_params = sum(k * k * cin * cout + cout for cin, cout, k in convs)
    # 105 -> conv10: 96 -> pool: 48 -> conv7: 42 -> pool: 21 -> conv4: 18 -> pool: 9 -> conv4: 6
    dense_params = 6 * 6 * 256 * 4096 + 4096
    assert conv_params + dense_params == 38_947_648
    model = _abstract(lambda: koch(rngs=nnx.Rngs(0)))
    assert _count(model) == conv_params + dense_params and model.out_features == 4096


def test_conv4_parameter_count_by_hand():
    block = lambda cin: 3 * 3 * cin * 64 + 64 + 2 * 64  # conv weight + bias, BN scale + bias  # noqa: E731
    assert _count(_abstract(lambda: conv4(rngs=nnx.Rngs(0), in_channels=1, image_size=28))) == block(1) + 3 * block(64)
    assert _count(_abstract(lambda: conv4(rngs=nnx.Rngs(0), image_size=84))) == block(3) + 3 * block(64)


def test_conv4_block_widths_parameter_count_by_hand_and_features():
    def block(cin: int, cout: int) -> int:
        return 3 * 3 * cin * cout + cout + 2 * cout
    widths = (8, 16, 32, 48)
    model = _abstract(lambda: conv4(rngs=nnx.Rngs(0), in_channels=1, image_size=28, block_widths=widths))
    assert _count(model) == block(1, 8) + block(8, 16) + block(16, 32) + block(32, 48)
    assert [b.conv.kernel.get_value().shape for b in model.blocks] == [(3, 3, 1, 8), (3, 3, 8, 16), (3, 3, 16, 32),
                                                                 (3, 3, 32, 48)]
    assert model.out_features == 48  # 28 -> 14 -> 7 -> 3 -> 1 pixels, the last block's filters
    make = lambda: conv4(rngs=nnx.Rngs(0), image_size=84, block_widths=widths)  # noqa: E731
    assert _traced_output_shape(make, (2, 84, 84, 3)) == (2, 48 * 5 * 5)
    with pytest.raises(UserError, match="4 widths"):
        conv4(rngs=nnx.Rngs(0), image_size=28, block_widths=(8, 16))


@pytest.mark.parametrize("image_size", [28, 32])
def test_conv4_global_pool_reads_the_whole_last_map(image_size):
    """The 2x2 pool reads the top-left windows of the last map (at 28x28 only 2x2 of its 3x3 positions);
    `global_pool` reads every position: NumPy maxima of the last block's activations. MAML's pool swap
    (use_matmul_convs) keeps the global pool."""
    from navee_jax.meta.conv import use_matmul_convs

    x = jax.random.uniform(jax.random.key(1), (3, image_size, image_size, 1))
    windows = conv4(rngs=nnx.Rngs(0), in_channels=1, image_size=image_size, block_widths=(4, 4, 8, 6))
    whole = conv4(rngs=nnx.Rngs(0), in_channels=1, image_size=image_size, block_widths=(4, 4, 8, 6),
                  global_pool=True)
    windows.eval(), whole.eval()
    h = x
    for block in windows.blocks[:3]:
        h = block(h)
    last = windows.blocks[3]
    act = np.asarray(nnx.relu(last.bn(last.conv(h))))  # (3, s, s, 6), s = image_size // 8
    side = act.shape[1] // 2 * 2
    assert whole.out_features == 6 and windows.out_features == 6 * (side // 2) ** 2
    np.testing.assert_allclose(np.asarray(whole(x)), act.max(axis=(1, 2)), rtol=1e-6)
    top_left = act[:, :side, :side].reshape(3, side // 2, 2, side // 2, 2, 6).max(axis=(2, 4)).reshape(3, -1)
    np.testing.assert_allclose(np.asarray(windows(x)), top_left, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(use_matmul_convs(whole)(x)), act.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,features,params", [
    (0, 1000, 138_357_544),
    (1, 4096, 138_357_544 - (4096 * 1000 + 1000)),  # fc7 after ReLU / dropout
    (3, 4096, 138_357_544 - (4096 * 1000 + 1000)),  # fc7 before ReLU
    (4, 4096, 138_357_544 - (4096 * 1000 + 1000) - (4096 * 4096 + 4096)),  # fc6 after ReLU / dropout
    (7, 512 * 7 * 7, 14_714_688),  # pooled conv features only
])
def test_vgg_remove_top_layers_features_and_what_is_built(n, features, params):
    model = _abstract(lambda: vgg16(rngs=nnx.Rngs(0), remove_top_layers=n))
    assert model.out_features == features and _count(model) == params


def test_vgg_remove_top_layers_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="remove_top_layers"):
        vgg16(rngs=nnx.Rngs(0), remove_top_layers=8)


def _images(n: int, size: int, channels: int = 3) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (n, size, size, channels))


def _traced_output_shape(make, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of an eval-mode forward pass, by tracing only: the numbers are the parity tests' business."""

    def forward(x):
        model = make()
        model.eval()
        return model(x)

    return jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32)).shape


@pytest.mark.parametrize("make,shape,features", [
    (lambda: resnet18(8, rngs=nnx.Rngs(0)), (2, 32, 32, 3), 64),
    (lambda: resnet50(rngs=nnx.Rngs(0)), (2, 64, 64, 3), 2048),
    (lambda: resnet50(8, rngs=nnx.Rngs(0), num_classes=5, in_channels=1), (2, 32, 32, 1), 5),
    (lambda: conv4(rngs=nnx.Rngs(0), in_channels=1, image_size=28), (2, 28, 28, 1), 64),
    (lambda: conv4(rngs=nnx.Rngs(0), image_size=84), (2, 84, 84, 3), 1600),
    (lambda: koch(rngs=nnx.Rngs(0)), (2, 105, 105, 1), 4096),
    (lambda: koch(rngs=nnx.Rngs(0), in_channels=3), (2, 105, 105, 3), 4096),
    (lambda: vgg16_bn(rngs=nnx.Rngs(0), remove_top_layers=1), (2, 32, 32, 3), 4096),
    (lambda: vgg16(rngs=nnx.Rngs(0), remove_top_layers=7), (2, 48, 48, 3), 25088),
])
def test_output_shapes(make, shape, features):
    assert _abstract(make).out_features == features
    assert _traced_output_shape(make, shape) == (2, features)


def test_koch_outputs_are_sigmoid_features():
    net = koch(8, rngs=nnx.Rngs(0))
    h = net(_images(3, 105, 1))
    assert h.shape == (3, 4096) and bool(jnp.all((h > 0) & (h < 1)))


def test_embed_dim_zero_keeps_the_backbone_features():
    backbone = conv4(8, rngs=nnx.Rngs(0), image_size=28)
    net = EmbeddingNet(backbone, 0, normalize=False, rngs=nnx.Rngs(1))
    x = _images(2, 28)
    assert net.head is None and net.out_features == backbone.out_features == 8
    np.testing.assert_array_equal(net(x), backbone(x))
    assert EmbeddingNet(backbone, 16, normalize=False, rngs=nnx.Rngs(1)).out_features == 16


def test_fixed_size_backbones_refuse_other_sizes():
    with pytest.raises(ValueError, match="28x28"):
        conv4(8, rngs=nnx.Rngs(0), image_size=28)(_images(1, 32))
    with pytest.raises(UserError, match="image_size"):
        conv4(8, rngs=nnx.Rngs(0), image_size=8)
    with pytest.raises(UserError, match="image_size"):
        koch(8, rngs=nnx.Rngs(0), image_size=40)


def test_vgg_dropout_only_in_train_mode():
    model = VGG(4, rngs=nnx.Rngs(0), num_classes=10, hidden=64, remove_top_layers=1)
    x = _images(2, 32)
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    assert not np.allclose(model(x), model(x))  # a fresh dropout mask per call


def test_pool_grid_keeps_the_layout_of_the_last_feature_map():
    """model.pool_grid: each of grid x grid regions of the last map averaged (a NumPy loop over regions), row by
    row; grid 1 is the global average the papers pool with; the weights are the same whatever the grid."""
    x = _images(2, 64)
    pooled = resnet18(8, rngs=nnx.Rngs(0), pool_grid=2)
    plain = resnet18(8, rngs=nnx.Rngs(0))
    pooled.eval()
    plain.eval()
    assert pooled.out_features == 4 * plain.out_features == 256
    b = plain
    fmap = b.stem_pool(b.bn1(b.conv1(x)))
    for s in range(b.num_stages):
        for block in getattr(b, f"layer{s + 1}"):
            fmap = block(fmap)
    fmap = np.asarray(fmap)  # (2, 2, 2, 64) at 64x64
    h = fmap.shape[1] // 2
    want = np.concatenate([fmap[:, i * h:(i + 1) * h, j * h:(j + 1) * h].mean(axis=(1, 2))
                           for i in range(2) for j in range(2)], axis=1)
    np.testing.assert_allclose(pooled(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain(x), fmap.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="model.pool_grid=3 does not divide the last feature map"):
        resnet18(8, rngs=nnx.Rngs(0), pool_grid=3)(x)
