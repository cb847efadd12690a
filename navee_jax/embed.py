"""The embedding function every part shares: images (uint8, as the input pipeline gives them) -> the
model's features, jitted over the mesh; normalisation happens inside the jit."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from navee_jax.backend import compiler_options
from navee_jax.distances import l2_normalize
from navee_jax.errors import UserError
from navee_jax.sharding import batch_sharded, process_share, replicated, shard_batch

Prepare = Callable[[jax.Array], jax.Array]
EmbedFn = Callable[[Any, jax.Array], jax.Array]  # (train state, images) -> features


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 batches from the input pipeline -> float32 (x / 255 - mean) / std. Done inside the jitted
    steps, where it fuses into the first layer, so the host moves 4x fewer bytes than float batches."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def image_normalizer(data_cfg: ml_collections.ConfigDict, in_channels: int = 3) -> Prepare:
    """`normalize_images` with the config's `data.mean` / `data.std`; for a one-channel model, only the
    first channel of the (grayscale, so identical) three."""
    mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)
    if in_channels == 3:
        return lambda images: normalize_images(images, mean, std)
    if in_channels != 1:
        raise UserError(f"model.in_channels={in_channels}: the input pipeline gives 3 (colour) or 1 (grayscale)")
    if not (data_cfg.grayscale or data_cfg.binarize):
        raise UserError("model.in_channels=1 needs grayscale images: set --config.data.grayscale=True "
                        "(or data.binarize=True)")
    return lambda images: normalize_images(images[..., :1], mean[:1], std[:1])


@dataclasses.dataclass(frozen=True)
class ShiftViews:
    """Test-time augmentation by shifts: an image's embedding is the mean of the embeddings of the image moved
    by (dy, dx) in {-px, 0, px}^2 (9 views; uncovered pixels `fill`), L2-normalised again if `renormalize`
    (a model whose embeddings are unit vectors). A network that is not fully shift-invariant ranks unseen
    classes better with it (docs/omniglot.md)."""

    px: int
    fill: int  # uint8, the background the shifted-in border gets
    renormalize: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ShiftViews | None:
        """`model.tta_shift_px` (None when 0)."""
        px = int(config.model.tta_shift_px)
        if px == 0:
            return None
        return cls(px, int(round(255 * config.data.fill)), bool(config.model.normalize))

    def views(self, images: jax.Array) -> jax.Array:
        """(9 * N, H, W, C): the 9 shifted copies of the (N, H, W, C) `images`, view-major."""
        p, (h, w) = self.px, images.shape[1:3]
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=jnp.asarray(self.fill, images.dtype))
        # Content moved by (dy, dx): out[y, x] = in[y - dy, x - dx].
        offsets = [(dy, dx) for dy in (-p, 0, p) for dx in (-p, 0, p)]
        return jnp.concatenate([padded[:, p - dy:p - dy + h, p - dx:p - dx + w] for dy, dx in offsets])

    def average(self, embeddings: jax.Array, n: int) -> jax.Array:
        """(N, D) mean over the views of (9 * N, D) view-major embeddings."""
        mean = embeddings.reshape(9, n, -1).mean(axis=0)
        return l2_normalize(mean) if self.renormalize else mean


def embed_images(model: nnx.Module, images: jax.Array, prepare: Prepare | None = None,
                 forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
                 shifts: ShiftViews | None = None) -> jax.Array:
    """The embedding of a batch of pipeline images: `prepare` (normalisation), then `forward(model, x)` (or
    `model(x)`), averaged over `shifts`' views when given. Traceable: jitted here, exported for serving."""
    views = shifts.views(images) if shifts else images
    x = prepare(views) if prepare else views
    out = forward(model, x) if forward else model(x)
    return shifts.average(out, images.shape[0]) if shifts else out


def make_embed_fn(eval_graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare | None = None,
                  forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
                  shifts: ShiftViews | None = None) -> EmbedFn:
    """(state, images) -> `embed_images`, jitted over the mesh, in the mode `eval_graphdef` was split in (eval:
    BatchNorm running statistics); `forward` is e.g. MAML's features before its head."""

    def embed(state: Any, images: jax.Array) -> jax.Array:
        model = nnx.merge(eval_graphdef, state.params, state.model_state)
        return embed_images(model, images, prepare, forward, shifts)

    repl = replicated(mesh)
    return jax.jit(embed, in_shardings=(repl, batch_sharded(mesh)), out_shardings=repl,
                   compiler_options=compiler_options(mesh))


def embed_in_batches(embed_fn: EmbedFn, state: Any, batches: Iterable[np.ndarray],
                     batch_size: int, mesh: Mesh) -> np.ndarray:
    """(n, d) embeddings of image batches of at most `batch_size`, each run as one fixed-size sharded batch
    (one compiled shape) and cut back to its length."""
    out = []
    for images in batches:
        n = len(images)
        # Padded with copies of the batch's own images, not zeros: a network whose BatchNorm uses batch
        # statistics (MAML) would otherwise normalise with statistics of blank images.
        padded = np.concatenate([images, images[np.arange(batch_size - n) % n]])
        # Multi-host: each process feeds its share of the batch; the embeddings come back replicated.
        share = process_share(padded, jax.process_index(), jax.process_count())
        out.append(np.asarray(embed_fn(state, shard_batch(share, mesh)))[:n])
    return np.concatenate(out)
