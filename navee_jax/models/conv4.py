"""Conv-4, the small backbone of the few-shot literature (Vinyals et al. 2016, Snell et al. 2017, Finn et al. 2017).

Four blocks of 3x3 conv (padding 1) - BatchNorm - ReLU - 2x2 max-pool, then flatten: on 28x28
Omniglot that is 64 features, on 84x84 miniImageNet 1600. Every block has `width` filters (64 in the
papers) unless `block_widths` names each block's. Each pool floors odd sizes, so at 28x28 the last one reads
only the top-left 2x2 of the fourth block's 3x3 map; `global_pool` max-pools that whole map instead (one value
per filter at any input size). Because the output is flattened, its
size depends on the input size; the network takes `image_size` at construction so that
`out_features` is known before any image is seen (the embedding head is built from it), and
refuses images of another size with a clear error rather than a shape mismatch deep in the head.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from navee_jax.errors import UserError

NUM_BLOCKS = 4


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2; VALID pooling floors odd sizes (7 -> 3), as torch's MaxPool2d(2) does."""
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


def max_over_positions(x: jax.Array) -> jax.Array:
    """Each filter's maximum over the whole map, kept as a 1x1 map."""
    return x.max(axis=(1, 2), keepdims=True)


class ConvBlock(nnx.Module):
    """3x3 conv (with bias, as in the reference implementations and their parameter counts) - BN - ReLU - pool.

    Initialisation is Flax's default: the papers used their framework's defaults, not a particular scheme.
    `pool` is a hook (like nnx.Conv's `conv_general_dilated`): MAML installs a form that vmaps well.
    """

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.pool = max_pool_2x2

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pool(nnx.relu(self.bn(self.conv(x))))


class Conv4(nnx.Module):
    """NHWC images of `image_size` x `image_size` -> (N, last block's width * (image_size // 16)**2), or (N, last
    block's width) with `global_pool`."""

    def __init__(self, width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, image_size: int = 84,
                 block_widths: Sequence[int] = (), global_pool: bool = False):
        if image_size < 2**NUM_BLOCKS:
            raise UserError(f"conv4: image_size {image_size} is too small; its four 2x2 max-pools need at least "
                            f"{2**NUM_BLOCKS} pixels")
        widths = tuple(block_widths) or (width,) * NUM_BLOCKS
        if len(widths) != NUM_BLOCKS:
            raise UserError(f"conv4: block_widths {widths} must name {NUM_BLOCKS} widths, one per block")
        ins = (in_channels, *widths[:-1])
        self.blocks = nnx.List([ConvBlock(cin, cout, rngs) for cin, cout in zip(ins, widths)])
        if global_pool:
            self.blocks[-1].pool = max_over_positions
        self.image_size = image_size
        # Each VALID pool floors, and floor(floor(s / 2) / 2) == s // 4, so four pools give s // 16.
        self.out_features = widths[-1] * (1 if global_pool else (image_size // 2**NUM_BLOCKS) ** 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"conv4 was built for {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[1]}x{x.shape[2]}")
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0], -1)


def conv4(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, image_size: int = 84,
          block_widths: Sequence[int] = (), global_pool: bool = False) -> Conv4:
    """Conv-4 with `width` filters per conv (64 in the papers), or `block_widths[i]` in block i; `global_pool`:
    the last block max-pools its whole map."""
    return Conv4(width, rngs=rngs, in_channels=in_channels, image_size=image_size, block_widths=block_widths,
                 global_pool=global_pool)
