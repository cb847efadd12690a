"""The embedding function every part shares: images (uint8, as the input pipeline gives them) -> the
model's features, jitted over the mesh; normalisation happens inside the jit."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from navee_jax.backend import compiler_options
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


def make_embed_fn(eval_graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare | None = None,
                  forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None
                  ) -> EmbedFn:
    """(state, images) -> embeddings, in the mode `eval_graphdef` was split in (eval: BatchNorm running
    statistics); `forward(model, x)` replaces `model(x)` (e.g. MAML's features before its head)."""

    def embed(state: Any, images: jax.Array) -> jax.Array:
        model = nnx.merge(eval_graphdef, state.params, state.model_state)
        x = prepare(images) if prepare else images
        return forward(model, x) if forward else model(x)

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
