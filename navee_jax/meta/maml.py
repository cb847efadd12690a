"""MAML (Finn, Abbeel & Levine 2017) and Meta-SGD (Li et al. 2017) as pure functions of a parameter pytree.

For each task of a meta-batch: start from the meta-parameters, take `steps` gradient steps on the task's
support loss (`inner_adapt`), then measure the loss on its query set with the adapted parameters
(`task_loss`). The meta-objective is the mean of the query losses over the meta-batch (`meta_objective`,
`jax.vmap` over tasks; `mean_over_tasks` gives it with its gradient, vmapped or one task at a time); its
gradient with respect to the meta-parameters is taken through the inner steps, second-order by default (the
inner gradients are differentiated again, Hessian-vector products and all).
`first_order=True` holds every inner gradient constant (`jax.lax.stop_gradient`), first-order MAML.

Inner step sizes are a pytree shaped like the parameters: every leaf the same `inner_lr` for MAML
(`constant_step_sizes`), or learned per parameter for Meta-SGD (then they are meta-parameters too and get
their gradient from the same `jax.grad`).

BatchNorm, as in Finn et al.'s code: it always normalises with the statistics of the batch it is given and
keeps no running averages, in meta-training and at test time alike. The inner steps normalise with the
support set's statistics, the query loss with the query set's; under `jax.vmap` each task has its own. Its
scale and bias are meta-learned and adapted like every other parameter. (`make_apply` runs a Flax NNX model
split in train mode, so BatchNorm uses batch statistics; the running averages it also computes are dropped.)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Params = Any  # a pytree of arrays
ApplyFn = Callable[[Params, jax.Array], jax.Array]  # (params, images (B, H, W, C)) -> logits (B, N)
Task = dict[str, jax.Array]  # support_images, support_labels, query_images, query_labels


def make_apply(graphdef: nnx.GraphDef, model_state: nnx.State) -> ApplyFn:
    """A pure (params, images) -> logits from a model split in train mode (BatchNorm on batch statistics).
    `model_state` (the BatchNorm running averages NNX keeps) is only needed to rebuild the model."""

    def apply(params: Params, images: jax.Array) -> jax.Array:
        # Fresh Variable objects in this trace: BatchNorm writes its (unused) running averages into them.
        return nnx.merge(graphdef, params, model_state, copy=True)(images)

    return apply


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean softmax cross-entropy, accuracy) of integer `labels`."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (jnp.argmax(logits, axis=-1) == labels).mean()


def constant_step_sizes(params: Params, inner_lr: float) -> Params:
    """MAML's one inner learning rate, as a pytree shaped like `params` (Meta-SGD learns this pytree)."""
    return jax.tree.map(lambda p: jnp.full_like(p, inner_lr), params)


def inner_adapt(apply_fn: ApplyFn, params: Params, step_sizes: Params, images: jax.Array, labels: jax.Array,
                steps: int, first_order: bool = False) -> Params:
    """`steps` gradient-descent steps on the cross-entropy of (images, labels): the adapted parameters.

    Unrolled in Python (`steps` is a handful), so that the outer gradient flows through every step.
    `first_order` stops the gradient through each inner gradient (it is then a constant of the outer loss).
    """

    def support_loss(p: Params) -> jax.Array:
        return cross_entropy(apply_fn(p, images), labels)[0]

    for _ in range(steps):
        grads = jax.grad(support_loss)(params)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        params = jax.tree.map(lambda p, lr, g: p - lr * g, params, step_sizes, grads)
    return params


def task_loss(apply_fn: ApplyFn, params: Params, step_sizes: Params, task: Task, steps: int,
              first_order: bool = False) -> tuple[jax.Array, jax.Array]:
    """(query loss, query accuracy) of one task after adapting `params` on its support set."""
    adapted = inner_adapt(apply_fn, params, step_sizes, task["support_images"], task["support_labels"], steps,
                          first_order)
    return cross_entropy(apply_fn(adapted, task["query_images"]), task["query_labels"])


def meta_objective(apply_fn: ApplyFn, params: Params, step_sizes: Params, tasks: Task, steps: int,
                   first_order: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean query loss over the meta-batch, {"query_accuracy": its mean}); `tasks` holds arrays with a
    leading task axis, vmapped over. (Finn et al.'s code also averages over tasks: the issue's "summed"
    query losses up to a constant 1 / tasks.)"""
    return _vmapped_mean(lambda p, t: task_loss(apply_fn, p, step_sizes, t, steps, first_order), params, tasks)


def _vmapped_mean(task_fn: Callable[[Any, Task], tuple[jax.Array, jax.Array]], args: Any,
                  tasks: Task) -> tuple[jax.Array, dict[str, jax.Array]]:
    losses, accuracies = jax.vmap(lambda t: task_fn(args, t))(tasks)
    return losses.mean(), {"query_accuracy": accuracies.mean()}


def mean_over_tasks(task_fn: Callable[[Any, Task], tuple[jax.Array, jax.Array]], args: Any, tasks: Task,
                    strategy: str = "vmap") -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
    """((mean loss, {"query_accuracy": mean accuracy}), gradient of the mean loss with respect to `args`) of
    `task_fn(args, task) -> (loss, accuracy)` over the leading task axis of `tasks`.

    'vmap': every task at once, the gradient of `meta_objective`'s vmapped mean: one batched program, what an
    accelerator runs well. 'scan': one task at a time inside the program, each task's gradient added to a
    running sum (`lax.scan`): the same arithmetic, no per-task kernels batched together and no activations kept
    across tasks; XLA:CPU runs it faster than vmap (docs/maml.md)."""
    if strategy == "vmap":
        return jax.value_and_grad(lambda a: _vmapped_mean(task_fn, a, tasks), has_aux=True)(args)
    if strategy != "scan":
        raise ValueError(f"strategy must be 'vmap' or 'scan', not {strategy!r}")
    value_and_grad = jax.value_and_grad(task_fn, has_aux=True)

    def add_task(total, task):
        (loss, accuracy), grads = value_and_grad(args, task)
        return jax.tree.map(jnp.add, total, (loss, accuracy, grads)), None

    zero = jnp.zeros((), jnp.float32)
    count = jax.tree.leaves(tasks)[0].shape[0]
    # Two tasks per loop iteration: independent work XLA:CPU can run side by side on its threads.
    total, _ = jax.lax.scan(add_task, (zero, zero, jax.tree.map(jnp.zeros_like, args)), tasks, unroll=2)
    loss, accuracy, grads = jax.tree.map(lambda x: x / count, total)
    return (loss, {"query_accuracy": accuracy}), grads


def adapt_and_predict(apply_fn: ApplyFn, params: Params, step_sizes: Params, support_images: jax.Array,
                      support_labels: jax.Array, query_images: jax.Array, steps: int) -> jax.Array:
    """Meta-test on one episode: fine-tune on its support set, then the predicted class of each query."""
    adapted = inner_adapt(apply_fn, params, step_sizes, support_images, support_labels, steps)
    return jnp.argmax(apply_fn(adapted, query_images), axis=-1)
