"""MAML's pieces for the shared trainer: config checks, the network, the train state and the jitted meta-step.

The meta-step has the train step's form, (TrainState, batch) -> (TrainState, metrics), so the one training
loop (navee_jax.launcher.train, through navee_jax.meta.method) runs it, checkpoints it and resumes it like
every other method. A batch is a meta-batch of `sampler.tasks_per_batch` episodes (sampler kind 'tasks'):
images (T, N*(K+Q), S, S, 3), support then query images of each task, support_labels (T, N*K) and query_labels
(T, N*Q). The task axis is sharded on the mesh's `data` axis (navee_jax.sharding.shard_step_batch), the
parameters are replicated; XLA adds the all-reduce of the meta-gradient, so the step is data-parallel over
tasks.

TrainState use: `params` are the meta-parameters (Conv-4 and a `sampler.ways`-way linear head);
`model_state` holds the BatchNorm running averages NNX keeps, never used (see navee_jax.meta.maml);
`loss_params` is {"inner_lr": per-parameter step sizes} with Meta-SGD (`loss.learn_inner_lr`), else {}.
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from navee_jax.backend import cpu_tuned
from navee_jax.errors import UserError
from navee_jax.meta.conv import use_matmul_convs
from navee_jax.meta.maml import Params, constant_step_sizes, make_apply, mean_over_tasks, task_loss
from navee_jax.models import build_model
from navee_jax.sharding import replicated
from navee_jax.embed import Prepare, make_embed_fn
from navee_jax.train_state import TrainState, apply_gradients, new_train_state


def check_config(config: ml_collections.ConfigDict) -> None:
    """One-line UserError for any setting MAML cannot honour."""
    loss, s, m = config.loss, config.sampler, config.model
    problems = [
        (s.kind != "tasks", f"sampler.kind={s.kind!r}: MAML trains on meta-batches of episodes, 'tasks'"),
        (s.tasks_per_batch < 1, f"sampler.tasks_per_batch={s.tasks_per_batch}: a meta-batch needs >= 1 task"),
        (s.ways < 2 or s.shots < 1 or s.queries < 1,
         f"sampler: a task needs ways >= 2, shots >= 1, queries >= 1; got {s.ways}, {s.shots}, {s.queries}"),
        (loss.inner_steps < 1, f"loss.inner_steps={loss.inner_steps}: MAML adapts with >= 1 inner step"),
        (loss.eval_inner_steps < 1, f"loss.eval_inner_steps={loss.eval_inner_steps}: evaluation fine-tunes "
                                    f"with >= 1 step"),
        (not loss.inner_lr > 0, f"loss.inner_lr={loss.inner_lr}: the inner learning rate must be > 0"),
        (m.backbone != "conv4", f"model.backbone={m.backbone!r}: MAML here uses 'conv4' (its stride-1 "
                                f"convolutions vmap over tasks as matrix products, navee_jax.meta.conv)"),
        (m.embed_dim != s.ways, f"model.embed_dim={m.embed_dim}: MAML's head has one output per class, "
                                f"sampler.ways={s.ways}; leave model.embed_dim unset (it follows sampler.ways)"),
        (m.normalize or m.head_batchnorm, "model.normalize / model.head_batchnorm: MAML's head outputs logits; "
                                          "set both False"),
        (m.frozen_batchnorm, "model.frozen_batchnorm=True: MAML's BatchNorm always uses the task's batch "
                             "statistics (navee_jax.meta.maml); set it False"),
        (bool(m.frozen_stages), f"model.frozen_stages={tuple(m.frozen_stages)}: MAML adapts every parameter; "
                                f"use ()"),
        (bool(m.pretrained), "model.pretrained: there are no pretrained Conv-4 weights; use ''"),
        (bool(m.tta_shift_px), "model.tta_shift_px: MAML's features use the batch's BatchNorm "
                               "statistics, which shifted copies would change; use 0"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def build_network(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """Conv-4 and a linear head of `sampler.ways` logits (the embedding head with embed_dim = ways and no
    normalisation), in train mode (BatchNorm on batch statistics), convolutions as matrix products."""
    model = build_model(config.model, rngs, config.data.image_size)
    model.train()
    return use_matmul_convs(model)


def step_sizes(loss_cfg: ml_collections.ConfigDict, params: Params, loss_params: dict) -> Params:
    """The inner step sizes: Meta-SGD's learned ones, or `loss.inner_lr` for every parameter."""
    return loss_params["inner_lr"] if loss_cfg.learn_inner_lr else constant_step_sizes(params, loss_cfg.inner_lr)


def init_state(model: nnx.Module, tx: optax.GradientTransformation,
               loss_cfg: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, train state); Meta-SGD's step sizes start at `loss.inner_lr` (they are the state's
    `loss_params`, with their own learning rate in `tx`: navee_jax.train_state.make_optimizer)."""
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    loss_params = {"inner_lr": constant_step_sizes(params, loss_cfg.inner_lr)} if loss_cfg.learn_inner_lr else {}
    return graphdef, new_train_state(params, model_state, loss_params, tx)


def split_tasks(images: jax.Array, batch: dict[str, jax.Array], n_support: int) -> dict[str, jax.Array]:
    """A meta-batch's (T, N*(K+Q), ...) images, support first, as the tasks `meta_objective` takes."""
    return {"support_images": images[:, :n_support], "support_labels": batch["support_labels"],
            "query_images": images[:, n_support:], "query_labels": batch["query_labels"]}


def make_meta_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, prepare: Prepare,
                   config: ml_collections.ConfigDict) -> Callable:
    """(state, meta-batch) -> (state, metrics), jitted: one outer update by `tx` with the meta-gradient
    (second-order unless `loss.first_order`) of the meta-parameters and of Meta-SGD's step sizes.

    The tasks of a meta-batch are vmapped (one batched program, sharded over the mesh by XLA), except on a
    CPU mesh (`navee_jax.backend.cpu_tuned`), where each device scans its share of the tasks one at a time
    and the devices average their gradients (`shard_map`): the same meta-gradient, about 1.5x faster on
    XLA:CPU (`mean_over_tasks`, bench/maml_step.py)."""
    loss_cfg = config.loss
    n_support = config.sampler.ways * config.sampler.shots
    strategy = "scan" if cpu_tuned(mesh) else "vmap"

    def tasks_gradient(args, model_state, tasks):
        apply_fn = make_apply(graphdef, model_state)

        def task_fn(args, task):
            params, loss_params = args
            return task_loss(apply_fn, params, step_sizes(loss_cfg, params, loss_params), task,
                             loss_cfg.inner_steps, loss_cfg.first_order)

        return mean_over_tasks(task_fn, args, tasks, strategy)

    mean_gradient = tasks_gradient
    if strategy == "scan":  # each device its own tasks; equal shares, so the mean of means is the mean
        per_device = lambda *a: jax.lax.pmean(tasks_gradient(*a), "data")  # noqa: E731
        mean_gradient = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P(),
                                      check_vma=False)

    def step(state: TrainState, batch: dict[str, jax.Array]):
        tasks = split_tasks(prepare(batch["images"]), batch, n_support)
        (loss, aux), (grads, loss_grads) = mean_gradient((state.params, state.loss_params), state.model_state,
                                                         tasks)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return apply_gradients(state, tx, grads, loss_grads, state.model_state), metrics

    return jax.jit(step, out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_feature_fn(graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare) -> Callable[[TrainState, jax.Array],
                                                                                         jax.Array]:
    """(state, images) -> Conv-4 features (before the head), BatchNorm on the statistics of `images`: the
    embedding the held-out retrieval mAP and 1-NN numbers of a MAML run are computed on."""
    return make_embed_fn(graphdef, mesh, prepare, forward=lambda model, x: model.backbone(x))
