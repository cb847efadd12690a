"""ResNet with torchvision's topology (v1.5: stride on the 3x3 conv), in Flax NNX, NHWC.

Attribute names follow torchvision's state_dict (conv1, bn1, layer1.0.downsample, ...) so that
converted ImageNet weights map one to one.
"""

from __future__ import annotations

import jax
from flax import nnx

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BN scale 1, bias 0.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    pad = k // 2  # explicit symmetric padding, as torch does (SAME would pad asymmetrically at stride 2)
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=_conv_init, rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


class Downsample(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, stride, rngs)
        self.bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.downsample = Downsample(cin, cout, stride, rngs) if stride != 1 or cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet(nnx.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool), four stages, global average pool -> (N, 8 * width)."""

    def __init__(self, blocks_per_stage: tuple[int, ...], width: int, rngs: nnx.Rngs, in_channels: int = 3):
        self.conv1 = _conv(in_channels, width, 7, 2, rngs)
        self.bn1 = _bn(width, rngs)
        cin = width
        for s, n in enumerate(blocks_per_stage):
            cout = width * 2**s
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (b == 0 and s > 0) else 1, rngs))
                cin = cout
            setattr(self, f"layer{s + 1}", nnx.List(blocks))
        self.num_stages = len(blocks_per_stage)
        self.out_features = cin

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s in range(self.num_stages):
            for block in getattr(self, f"layer{s + 1}"):
                x = block(x)
        return x.mean(axis=(1, 2))


def resnet18(width: int = 64, *, rngs: nnx.Rngs) -> ResNet:
    """torchvision resnet18 without its classifier; `width` 64 is the standard network."""
    return ResNet((2, 2, 2, 2), width, rngs)
