"""Train state and the pure, jitted train / embed steps over a Flax NNX model's split state."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from navee_jax.errors import UserError
from navee_jax.models.stages import freeze_stages, trainable_filter
from navee_jax.train.sharding import batch_sharded, replicated

# (embeddings shaped like the batch's leading image axes, the batch, the loss's own parameters) -> (loss, aux)
LossFn = Callable[[jax.Array, dict[str, jax.Array], dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]
Prepare = Callable[[jax.Array], jax.Array]

# XLA:CPU: convolutions on XLA's own (Eigen) path instead of YNNPACK, jaxlib 0.10's default; dots and
# reductions stay on YNNPACK. YNNPACK's kernel-gradient convolutions are 2-4x slower here, so a ResNet-18
# train step takes about 0.6x the time (docs/train_step.md). GPU and TPU compilers never see it.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_options_supported() -> bool:
    try:  # a jaxlib that does not know the option refuses it at compile time; it then keeps its defaults
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception:
        return False
    return True


def compiler_options(mesh: Mesh) -> dict[str, str]:
    """`CPU_COMPILER_OPTIONS` for a CPU mesh, unless XLA_FLAGS already chooses the fusion types."""
    chosen_by_user = "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")
    if mesh.devices.flat[0].platform != "cpu" or chosen_by_user or not _cpu_options_supported():
        return {}
    return dict(CPU_COMPILER_OPTIONS)


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


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # trainable (nnx.Param outside frozen stages)
    model_state: nnx.State  # everything else: BatchNorm running statistics, frozen stages' parameters
    opt_state: optax.OptState
    loss_params: dict[str, jax.Array]  # the loss's learned parameters (proxy-anchor's proxies), else {}
    loss_opt_state: optax.OptState  # their optimizer, with its own learning rate


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, frozen_batchnorm: bool = False,
                     frozen_stages: tuple[str, ...] = (), loss_params: dict[str, jax.Array] | None = None,
                     loss_tx: optax.GradientTransformation | None = None
                     ) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
    """(train-mode graphdef, eval-mode graphdef, state). The model object is not used afterwards.

    With `frozen_batchnorm`, training also normalises with the stored statistics and never updates
    them (BatchNorm's scale and bias still train), as deep metric learning usually does: a PK batch
    of a few classes gives biased batch statistics. `frozen_stages` (see models.stages) neither train
    nor update their statistics: their parameters live in `model_state`, beside the statistics.
    `loss_params` train with `loss_tx` (the same `tx` if not given).
    """
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    if not frozen_batchnorm:
        model.train()
    freeze_stages(model, frozen_stages)
    graphdef, params, model_state = nnx.split(model, trainable_filter(frozen_stages), ...)
    loss_params = loss_params or {}
    state = TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params), loss_params,
                       (loss_tx or tx).init(loss_params))
    return graphdef, eval_graphdef, state


def embedding_spread(embeddings: jax.Array) -> jax.Array:
    """Mean distance to the batch centroid over mean norm: near 0 means the embedding collapsed."""
    centred = embeddings - embeddings.mean(axis=0)
    return jnp.linalg.norm(centred, axis=1).mean() / (jnp.linalg.norm(embeddings, axis=1).mean() + 1e-12)


def _embed_batch(model: nnx.Module, images: jax.Array, prepare: Prepare | None) -> jax.Array:
    """Embeddings of images with any leading axes ((B,), (n, 2), ...), shaped (*leading, d)."""
    flat = images.reshape((-1,) + images.shape[-3:])
    embeddings = model(prepare(flat) if prepare else flat)
    return embeddings.reshape(images.shape[:-3] + embeddings.shape[-1:])


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, loss_tx: optax.GradientTransformation,
                    grads: Any, loss_grads: Any, model_state: Any) -> TrainState:
    """The next TrainState: the model's parameters updated by `tx`, the loss's own by `loss_tx`."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    loss_updates, loss_opt_state = loss_tx.update(loss_grads, state.loss_opt_state, state.loss_params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), model_state, opt_state,
                      optax.apply_updates(state.loss_params, loss_updates), loss_opt_state)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, mesh: Mesh,
                    prepare: Prepare | None = None, frozen_stages: tuple[str, ...] = (),
                    loss_tx: optax.GradientTransformation | None = None, xla_options: dict[str, str] | None = None):
    """(state, batch) -> (state, metrics), jitted; `batch` holds `images` (any leading axes, sharded on
    the mesh: see sharding.shard_step_batch) and whatever the loss reads (labels, pair flags, ...).
    `prepare` (e.g. `image_normalizer`) turns the images into the model's input inside the jit;
    `frozen_stages` and `loss_tx` must be those given to `init_train_state`. `xla_options` replaces
    `compiler_options(mesh)` (`{}`: the compiler's defaults)."""
    trainable = trainable_filter(frozen_stages)
    loss_tx = loss_tx or tx

    def step(state: TrainState, batch: dict[str, jax.Array]):
        def compute_loss(params, loss_params):
            # Fresh Variable objects for this trace: NNX refuses to update BatchNorm statistics
            # held by Variables that were created in an enclosing trace.
            model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, state.model_state))
            embeddings = _embed_batch(model, batch["images"], prepare)
            loss, aux = loss_fn(embeddings, batch, loss_params)
            spread = embedding_spread(embeddings.reshape(-1, embeddings.shape[-1]))
            return loss, ({**aux, "spread": spread}, nnx.state(model, nnx.Not(trainable)))

        grad_fn = jax.value_and_grad(compute_loss, argnums=(0, 1), has_aux=True)
        (loss, (aux, model_state)), (grads, loss_grads) = grad_fn(state.params, state.loss_params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return apply_gradients(state, tx, loss_tx, grads, loss_grads, model_state), metrics

    # The batch's shardings come with its arrays (images on `data`, small metadata replicated).
    return jax.jit(step, out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler_options(mesh) if xla_options is None else xla_options)


def make_embed_fn(eval_graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare | None = None,
                  forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None
                  ) -> Callable[[TrainState, Any], jax.Array]:
    """(state, images) -> embeddings, in the mode `eval_graphdef` was split in (eval: BatchNorm running
    statistics); `forward(model, x)` replaces `model(x)` (e.g. MAML's features before its head)."""

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        model = nnx.merge(eval_graphdef, state.params, state.model_state)
        x = prepare(images) if prepare else images
        return forward(model, x) if forward else model(x)

    repl = replicated(mesh)
    return jax.jit(embed, in_shardings=(repl, batch_sharded(mesh)), out_shardings=repl,
                   compiler_options=compiler_options(mesh))
