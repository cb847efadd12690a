"""Refitting `model.whiten`'s whitening on training images: the state's embedding without whitening, of a fixed
seeded sample of the training images (un-augmented, one view each), gives the mean and projection
(navee_jax.models.whitening.fit_whitening) that evaluation, checkpoints and recognition then use."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.embed import Prepare, embed_in_batches, make_embed_fn
from navee_jax.errors import UserError
from navee_jax.models.whitening import fit_whitening, with_whitening
from navee_jax.sharding import replicated


def whitening_sample(train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of the training image indices `train` (all of them if fewer), drawn without replacement by
    `seed`, in ascending order."""
    if len(train) <= count:
        return np.sort(train)
    return np.sort(np.random.default_rng(seed).choice(train, count, replace=False))


def make_refit(catalogue: Catalogue, train: np.ndarray, config: ml_collections.ConfigDict,
               eval_graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare) -> Callable[[Any], Any]:
    """state -> the state with its whitening refitted (power `model.whiten`) on `model.whiten_images` of the
    training images `train`."""
    images = whitening_sample(train, config.model.whiten_images, config.seed)
    embed_fn = make_embed_fn(eval_graphdef, mesh, prepare)  # one view: the whitening applies to each view
    batch_size, repl = config.eval.batch_size, replicated(mesh)

    def refit(state: Any) -> Any:
        width = state.model_state["whitening"]["mean"][...].shape[0]
        unwhitened = state.replace(model_state=with_whitening(state.model_state, np.zeros(width), np.eye(width)))
        features = embed_in_batches(embed_fn, unwhitened, eval_batches(catalogue, images, config.data, batch_size),
                                    batch_size, mesh)
        if not np.isfinite(features).all():
            raise UserError("the embeddings of the training images the whitening is fitted on contain NaN/inf: "
                            "the model diverged; lower --config.optim.lr")
        mean, projection = fit_whitening(features, config.model.whiten)
        fitted = with_whitening(state.model_state, mean, projection)
        return state.replace(model_state=jax.device_put(fitted, repl))

    return refit
