"""The train state every method checkpoints, and its one optimizer.

A method's trainable values are the network's parameters and, for some methods, parameters of their own
(proxy-anchor's proxies, Meta-SGD's step sizes). One optax optimizer updates both, labelled
(`optax.multi_transform`): the network with AdamW on the config's schedule, the method's own parameters
with Adam at `loss.params_lr_multiplier` times that schedule.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # the network's trainable parameters
    model_state: nnx.State  # the rest of the network: BatchNorm statistics, frozen stages' parameters
    loss_params: dict[str, jax.Array]  # the method's own learned parameters, else {}
    opt_state: optax.OptState  # of `make_optimizer`'s transform over {"model": params, "loss": loss_params}


def make_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """`optim.lr`, times `optim.decay_factor` every `optim.decay_every_epochs` epochs."""
    return optax.exponential_decay(optim.lr, transition_steps=max(1, optim.decay_every_epochs * steps_per_epoch),
                                   decay_rate=optim.decay_factor, staircase=True)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    multiplier = config.loss.get("params_lr_multiplier", 1.0)
    return optax.multi_transform(
        {"model": optax.adamw(schedule, weight_decay=config.optim.weight_decay),
         "loss": optax.adam(lambda count: schedule(count) * multiplier)},
        {"model": "model", "loss": "loss"})


def new_train_state(params: nnx.State, model_state: nnx.State, loss_params: dict[str, jax.Array],
                    tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, loss_params,
                      tx.init({"model": params, "loss": loss_params}))


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads: Any, loss_grads: Any,
                    model_state: Any) -> TrainState:
    """The next TrainState, with `model_state` (the step's updated BatchNorm statistics) in it."""
    trainable = {"model": state.params, "loss": state.loss_params}
    updates, opt_state = tx.update({"model": grads, "loss": loss_grads}, state.opt_state, trainable)
    new = optax.apply_updates(trainable, updates)
    return TrainState(state.step + 1, new["model"], model_state, new["loss"], opt_state)
