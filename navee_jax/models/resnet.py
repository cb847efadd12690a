"""ResNet-18 / ResNet-50 with torchvision's topology (v1.5: stride on the 3x3 conv), in Flax NNX, NHWC.

Attribute names follow torchvision's state_dict (conv1, bn1, layer1.0.downsample, fc, ...) so that
converted ImageNet weights map one to one (see navee_jax.models.convert).

Plain NNX / lax ops (so cuDNN and XLA's fusions get them on GPU / TPU); the XLA:CPU backward passes live in
navee_jax.models.cpu_tuned, which swaps them into the static hooks (each nnx.Conv's conv_general_dilated,
BatchNorm.call_fn, ResNet.stem_pool) without changing the parameters or state.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from navee_jax.errors import UserError

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BN scale 1, bias 0.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = k // 2  # explicit symmetric padding, as torch does (SAME would pad asymmetrically at stride 2)
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=_conv_init, rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm, computed by `call_fn` (nnx.BatchNorm.__call__ itself): a static attribute, in the
    graphdef and not in the state, through which navee_jax.models.cpu_tuned installs its XLA:CPU
    backward pass without touching parameters or statistics."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.call_fn = nnx.BatchNorm.__call__

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        return self.call_fn(self, x, use_running_average, mask=mask)


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


def relu_max_pool(x: jax.Array) -> jax.Array:
    """The stem's ReLU then torch's MaxPool2d(3, stride=2, padding=1) on NHWC (padding with -inf, so a
    border window's maximum is over its real pixels, as in torch)."""
    return nnx.max_pool(nnx.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


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


def grid_average_pool(x: jax.Array, grid: int) -> jax.Array:
    """(N, H, W, C) -> (N, grid * grid * C): the mean of each of grid x grid equal regions, row by row; grid 1
    is global average pooling."""
    n, h, w, c = x.shape
    if h % grid or w % grid:
        raise UserError(f"model.pool_grid={grid} does not divide the last feature map ({h}x{w}); choose a divisor "
                        f"or change data.image_size")
    return x.reshape(n, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4)).reshape(n, grid * grid * c)


class ResNet(nnx.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool), one stage per entry of `blocks_per_stage`, global average pool (or
    `pool_grid` regions), optional classifier.

    Returns (N, out_features): the pooled features (2**(stages - 1) * width * block.expansion * pool_grid**2;
    8 * width * block.expansion for four stages and global pooling) when
    `num_classes` is 0, which is how few-shot embeddings use it, or the logits of an `fc` layer
    when `num_classes` > 0, which makes the full torchvision model (e.g. 1000 ImageNet classes)
    and its converted weights comparable.
    """

    def __init__(self, blocks_per_stage: tuple[int, ...], width: int, rngs: nnx.Rngs, in_channels: int = 3, *,
                 block: type[BasicBlock] | type[Bottleneck] = BasicBlock, num_classes: int = 0, pool_grid: int = 1):
        self.conv1 = _conv(in_channels, width, 7, 2, rngs)
        self.bn1 = _bn(width, rngs)
        # static (graphdef, not state): navee_jax.models.cpu_tuned swaps in a custom-VJP version
        self.stem_pool = relu_max_pool
        cin = width
        for s, n in enumerate(blocks_per_stage):
            planes = width * 2**s
            blocks = []
            for b in range(n):
                blocks.append(block(cin, planes, 2 if (b == 0 and s > 0) else 1, rngs))
                cin = planes * block.expansion
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.num_stages = len(blocks_per_stage)
        self.pool_grid = pool_grid
        cin *= pool_grid**2
        self.fc = _torch_linear(cin, num_classes, rngs) if num_classes > 0 else None
        self.out_features = num_classes if num_classes > 0 else cin

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem_pool(self.bn1(self.conv1(x)))
        for s in range(self.num_stages):
            for block in getattr(self, f"layer{s + 1}"):
                x = block(x)
        x = grid_average_pool(x, self.pool_grid)
        return x if self.fc is None else self.fc(x)


def _stages(blocks_per_stage: tuple[int, ...], num_stages: int) -> tuple[int, ...]:
    if not 1 <= num_stages <= len(blocks_per_stage):
        raise UserError(f"model.num_stages={num_stages}: a ResNet has 1 to {len(blocks_per_stage)} stages")
    return blocks_per_stage[:num_stages]


def resnet18(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 0,
             pool_grid: int = 1, num_stages: int = 4) -> ResNet:
    """torchvision resnet18 (`width` 64 is the standard network), headless unless `num_classes` > 0; with
    `num_stages` < 4 its top stages are left out (the features of an earlier stage, a larger map)."""
    return ResNet(_stages((2, 2, 2, 2), num_stages), width, rngs, in_channels, num_classes=num_classes,
                  pool_grid=pool_grid)


def resnet50(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 0,
             pool_grid: int = 1, num_stages: int = 4) -> ResNet:
    """torchvision resnet50 (`width` 64 is the standard network: 2048 features), headless unless
    `num_classes` > 0; `num_stages` as for resnet18."""
    return ResNet(_stages((3, 4, 6, 3), num_stages), width, rngs, in_channels, block=Bottleneck,
                  num_classes=num_classes, pool_grid=pool_grid)
