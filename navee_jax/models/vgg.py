"""VGG-16 with and without BatchNorm, torchvision's topology (vgg16 / vgg16_bn), in Flax NNX, NHWC.

`features` and `classifier` are lists indexed exactly as torchvision's nn.Sequential (parameter-free
ReLU / max-pool / dropout entries included), so state_dict names (features.0.weight,
classifier.6.bias, ...) map one to one onto attribute paths (see navee_jax.models.convert).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from navee_jax.errors import UserError

# Conv output channels as multiples of `width` (64 in the standard network); "M" is a 2x2 max-pool.
_VGG16 = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")
POOLED_SIZE = (7, 7)  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier
CLASSIFIER_LAYERS = 7  # fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8

# torchvision's initialisation: convs kaiming_normal_(fan_out, relu), Linear N(0, 0.01), biases 0.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_linear_init = nnx.initializers.normal(0.01)


class ReLU(nnx.Module):
    """Parameter-free, so that list indices line up with torchvision's nn.Sequential."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(x)


class MaxPool(nnx.Module):
    """2x2 / stride 2, flooring odd sizes as torch's MaxPool2d(2, 2) does."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.max_pool(x, (2, 2), strides=(2, 2))


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging weights of torch's adaptive average pooling along one axis.

    Output cell i averages input cells [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)), which
    covers every case: identity, exact division, overlapping windows and upsampling (1 -> 7 repeats).
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch.nn.functional.adaptive_avg_pool2d for NHWC `x`, for any input and output size."""
    for axis, n_out in zip((1, 2), output_size):
        if x.shape[axis] != n_out:
            pool = jnp.asarray(_pool_matrix(x.shape[axis], n_out), x.dtype)
            # HIGHEST: accelerators may otherwise average in reduced precision (TF32 / bf16 passes).
            x = jnp.moveaxis(jnp.tensordot(pool, x, axes=((1,), (axis,)), precision=jax.lax.Precision.HIGHEST),
                             0, axis)
    return x


class VGG(nnx.Module):
    """VGG-16 (optionally with BatchNorm after each conv): NHWC images -> (N, out_features).

    `remove_top_layers=n` takes the output n layers below the top, where a layer is one entry of
    torchvision's classifier [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8] (0 <= n <= 7): the result
    equals torchvision's `model.classifier = model.classifier[:7 - n]`. So n=0 gives the logits
    (`num_classes`), n=1 the fc7 features after ReLU (and dropout, when training), n=3 fc7 before
    ReLU, n=4 / n=6 fc6 after / before ReLU (`hidden` each), and n=7 the pooled conv features
    flattened (width * 8 * 7 * 7 = 25088). Removed layers are not built: no memory is spent on them.

    Flattening is NHWC order (h, w, c), unlike torch's (c, h, w); the converter permutes fc6's
    weight to match, so logits agree with torchvision and n=7 features are torch's, permuted.
    Dropout is active only in train mode (model.train()); model.eval() makes it the identity.
    """

    def __init__(self, width: int = 64, *, rngs: nnx.Rngs, batch_norm: bool = False, in_channels: int = 3,
                 num_classes: int = 1000, hidden: int = 4096, dropout: float = 0.5, remove_top_layers: int = 0):
        if not 0 <= remove_top_layers <= CLASSIFIER_LAYERS:
            raise UserError(f"vgg: remove_top_layers must be in [0, {CLASSIFIER_LAYERS}] (the layers fc6, ReLU, "
                            f"Dropout, fc7, ReLU, Dropout, fc8), got {remove_top_layers}")
        features, cin = [], in_channels
        for v in _VGG16:
            if v == "M":
                features.append(MaxPool())
                continue
            features.append(nnx.Conv(cin, width * v, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_conv_init,
                                     rngs=rngs))
            if batch_norm:
                # torch momentum 0.1 == flax momentum 0.9; torch eps 1e-5.
                features.append(nnx.BatchNorm(width * v, momentum=0.9, epsilon=1e-5, rngs=rngs))
            features.append(ReLU())
            cin = width * v
        self.features = nnx.List(features)
        self.pooled_channels = cin

        flat = cin * POOLED_SIZE[0] * POOLED_SIZE[1]
        layers = [lambda: nnx.Linear(flat, hidden, kernel_init=_linear_init, rngs=rngs), ReLU,
                  lambda: nnx.Dropout(dropout, rngs=rngs),
                  lambda: nnx.Linear(hidden, hidden, kernel_init=_linear_init, rngs=rngs), ReLU,
                  lambda: nnx.Dropout(dropout, rngs=rngs),
                  lambda: nnx.Linear(hidden, num_classes, kernel_init=_linear_init, rngs=rngs)]
        self.classifier = nnx.List([make() for make in layers[:CLASSIFIER_LAYERS - remove_top_layers]])
        linears = [layer for layer in self.classifier if isinstance(layer, nnx.Linear)]
        self.out_features = linears[-1].out_features if linears else flat

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.features:
            x = layer(x)
        x = adaptive_avg_pool(x, POOLED_SIZE)
        x = x.reshape(x.shape[0], -1)
        for layer in self.classifier:
            x = layer(x)
        return x


def vgg16(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 1000,
          remove_top_layers: int = 0) -> VGG:
    """torchvision vgg16; see VGG for what `remove_top_layers` keeps."""
    return VGG(width, rngs=rngs, in_channels=in_channels, num_classes=num_classes,
               remove_top_layers=remove_top_layers)


def vgg16_bn(width: int = 64, *, rngs: nnx.Rngs, in_channels: int = 3, num_classes: int = 1000,
             remove_top_layers: int = 0) -> VGG:
    """torchvision vgg16_bn; see VGG for what `remove_top_layers` keeps."""
    return VGG(width, rngs=rngs, batch_norm=True, in_channels=in_channels, num_classes=num_classes,
               remove_top_layers=remove_top_layers)
