"""The siamese CNN of Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image Recognition".

Twin network (105x105x1 Omniglot characters):
conv 64@10x10 ReLU, max-pool 2; conv 128@7x7 ReLU, max-pool 2; conv 128@4x4 ReLU, max-pool 2;
conv 256@4x4 ReLU; flatten (6x6x256 = 9216); dense 4096 sigmoid. Convs are unpadded, stride 1.
The verification head that compares two twin outputs, p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b), is the
loss's (navee_jax.losses.verification): its alpha and b train with it and rank at evaluation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from navee_jax.errors import UserError

# The paper's initialisation (section 3.2): weights N(0, 1e-2), biases N(0.5, 1e-2), the dense
# layers' weights N(0, 2e-1), so that training from scratch starts where the paper's did.
_weight_init = nnx.initializers.normal(1e-2)
_dense_weight_init = nnx.initializers.normal(2e-1)


def _bias_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return 0.5 + 1e-2 * jax.random.normal(key, shape, dtype)


# (filters as a multiple of `width`, kernel size, followed by a 2x2 max-pool)
_CONVS = ((1, 10, True), (2, 7, True), (2, 4, True), (4, 4, False))


class KochNet(nnx.Module):
    """NHWC images of `image_size` x `image_size` -> (N, features) in (0, 1).

    `width` 64 and `features` 4096 are the paper's network; `in_channels` 3 accepts colour images.
    The flattened size depends on the input size, so `image_size` is given at construction.
    """

    def __init__(self, width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 1, image_size: int = 105,
                 features: int = 4096):
        size, cin, convs = image_size, in_channels, []
        for mult, k, pool in _CONVS:
            size = size - k + 1
            size = size // 2 if pool else size
            if size < 1:
                raise UserError(f"koch: image_size {image_size} is too small for its unpadded convs and pools "
                                f"(105 in the paper)")
            convs.append(nnx.Conv(cin, width * mult, (k, k), padding="VALID", kernel_init=_weight_init,
                                  bias_init=_bias_init, rngs=rngs))
            cin = width * mult
        self.conv1, self.conv2, self.conv3, self.conv4 = convs
        self.fc = nnx.Linear(size * size * cin, features, kernel_init=_dense_weight_init, bias_init=_bias_init,
                             rngs=rngs)
        self.image_size = image_size
        self.out_features = features

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"koch was built for {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[1]}x{x.shape[2]}")
        for conv, (_, _, pool) in zip((self.conv1, self.conv2, self.conv3, self.conv4), _CONVS):
            x = nnx.relu(conv(x))
            if pool:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return nnx.sigmoid(self.fc(x.reshape(x.shape[0], -1)))


def koch(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 1, image_size: int = 105) -> KochNet:
    """The twin network of Koch et al. (2015); `width` 64 is the paper's."""
    return KochNet(width, rngs=rngs, in_channels=in_channels, image_size=image_size)
