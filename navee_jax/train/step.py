"""Metric learning's pure, jitted train step: embed a batch, apply a loss, update (a Flax NNX model's split state)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from navee_jax.backend import compiler_options
from navee_jax.embed import Prepare
from navee_jax.losses.registry import LossOnBatch
from navee_jax.models.stages import freeze_stages, trainable_filter
from navee_jax.sharding import replicated
from navee_jax.train_state import TrainState, apply_gradients, new_train_state


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, frozen_batchnorm: bool = False,
                     frozen_stages: tuple[str, ...] = (), loss_params: dict[str, jax.Array] | None = None
                     ) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
    """(train-mode graphdef, eval-mode graphdef, state). The model object is not used afterwards.

    With `frozen_batchnorm`, training also normalises with the stored statistics and never updates
    them (BatchNorm's scale and bias still train), as deep metric learning usually does: a PK batch
    of a few classes gives biased batch statistics. `frozen_stages` (see models.stages) neither train
    nor update their statistics: their parameters live in `model_state`, beside the statistics.
    `tx` updates {"model": params, "loss": loss_params} (navee_jax.train_state.make_optimizer). A
    `Whitening` (model.whiten) is the identity in the train graph and applies its fitted statistics in the eval
    graph.
    """
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    if not frozen_batchnorm:
        model.train()
    # The loss trains the embedding as it is; a fitted whitening applies only to evaluation and recognition.
    model.set_attributes(use_fitted=False, raise_if_not_found=False)
    freeze_stages(model, frozen_stages)
    graphdef, params, model_state = nnx.split(model, trainable_filter(frozen_stages), ...)
    return graphdef, eval_graphdef, new_train_state(params, model_state, loss_params or {}, tx)


def embedding_spread(embeddings: jax.Array) -> jax.Array:
    """Mean distance to the batch centroid over mean norm: near 0 means the embedding collapsed."""
    centred = embeddings - embeddings.mean(axis=0)
    return jnp.linalg.norm(centred, axis=1).mean() / (jnp.linalg.norm(embeddings, axis=1).mean() + 1e-12)


def _embed_batch(model: nnx.Module, inputs: jax.Array, prepare: Prepare | None,
                 forward: Callable[[nnx.Module, jax.Array], jax.Array] | None, item_ndim: int) -> jax.Array:
    """Embeddings of inputs (images, or features: `item_ndim` axes each) with any leading axes ((B,), (n, 2),
    ...), shaped (*leading, d)."""
    lead = inputs.shape[:inputs.ndim - item_ndim]
    flat = inputs.reshape((-1,) + inputs.shape[len(lead):])
    x = prepare(flat) if prepare else flat
    embeddings = forward(model, x) if forward else model(x)
    return embeddings.reshape(lead + embeddings.shape[-1:])


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossOnBatch, mesh: Mesh,
                    prepare: Prepare | None = None, frozen_stages: tuple[str, ...] = (),
                    xla_options: dict[str, str] | None = None,
                    forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None, item_ndim: int = 3):
    """(state, batch) -> (state, metrics), jitted; `batch` holds `images` (any leading axes, sharded on
    the mesh: see sharding.shard_step_batch) and whatever the loss reads (labels, pair flags, ...).
    `prepare` (e.g. `image_normalizer`) turns the images into the model's input inside the jit;
    `tx` and `frozen_stages` must be those given to `init_train_state`. `xla_options` replaces
    `compiler_options(mesh)` (`{}`: the compiler's defaults). `forward(model, x)` replaces `model(x)` on inputs
    of `item_ndim` axes each (top-tuning: the head on (B, D) cached features)."""
    trainable = trainable_filter(frozen_stages)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        def compute_loss(params, loss_params):
            # Fresh Variable objects for this trace: NNX refuses to update BatchNorm statistics
            # held by Variables that were created in an enclosing trace.
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            embeddings = _embed_batch(model, batch["images"], prepare, forward, item_ndim)
            loss, aux = loss_fn(embeddings, batch, loss_params)
            spread = embedding_spread(embeddings.reshape(-1, embeddings.shape[-1]))
            return loss, ({**aux, "spread": spread}, nnx.state(model, nnx.Not(trainable)))

        grad_fn = jax.value_and_grad(compute_loss, argnums=(0, 1), has_aux=True)
        (loss, (aux, model_state)), (grads, loss_grads) = grad_fn(state.params, state.loss_params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return apply_gradients(state, tx, grads, loss_grads, model_state), metrics

    # The batch's shardings come with its arrays (images on `data`, small metadata replicated).
    return jax.jit(step, out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler_options(mesh) if xla_options is None else xla_options)
