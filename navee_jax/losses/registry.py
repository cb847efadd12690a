"""Losses by name: `config.loss.name` -> the objective metric learning trains (navee_jax.train.method).

A loss module registers a builder with `@register_loss(name, samplers=...)`: (config, training labels) ->
`Objective`, the loss on a batch's embeddings plus any parameters of its own. `samplers` are the
`sampler.kind`s it can train on, the first the one its config uses. Adding a loss is one module that
registers itself (imported by navee_jax/losses/__init__.py) and one config file.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import ml_collections
import numpy as np

from navee_jax.errors import UserError

# (embeddings shaped like the batch's leading image axes, the batch, the loss's own parameters) -> (loss, aux)
LossOnBatch = Callable[[jax.Array, dict[str, jax.Array], dict[str, jax.Array]], tuple[jax.Array, dict]]


# (queries (n, d), gallery (m, d)) -> (n, m) non-negative distances, lower for more alike images; compiled
# (jitted), since the evaluators call it chunk by chunk
Distance = Callable[[jax.Array, jax.Array], jax.Array]


def no_params(_key: jax.Array, _dim: int) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: LossOnBatch
    # (PRNG key, embedding size) -> the loss's parameters
    init_params: Callable[[jax.Array, int], dict[str, jax.Array]] = no_params


@dataclasses.dataclass(frozen=True)
class LossEntry:
    samplers: tuple[str, ...]
    build: Callable[[ml_collections.ConfigDict, np.ndarray], Objective]  # (config, training image labels)
    # The loss's own ranking of images from its trained parameters (e.g. a verification head's score), which
    # the evaluators and the recognizer's gallery then use; None: `eval.metric` on the embeddings.
    distance: Callable[[dict[str, jax.Array]], Distance] | None = None


LOSSES: dict[str, LossEntry] = {}


def register_loss(name: str, samplers: tuple[str, ...],
                  distance: Callable[[dict[str, jax.Array]], Distance] | None = None):
    """Decorator registering `build(config, train_labels) -> Objective` as `loss.name=<name>`; `distance`:
    (the loss's parameters) -> its own ranking of images, for a loss that has one."""
    def register(build: Callable[[ml_collections.ConfigDict, np.ndarray], Objective]):
        LOSSES[name] = LossEntry(tuple(samplers), build, distance)
        return build
    return register


def loss_entry(name: str) -> LossEntry:
    if name not in LOSSES:
        raise UserError(f"loss.name: unknown loss {name!r}; available: {sorted(LOSSES)}")
    return LOSSES[name]


def make_objective(config: ml_collections.ConfigDict, train_labels: np.ndarray) -> Objective:
    """The objective of `config.loss` on `config.sampler.kind` batches of images with `train_labels`."""
    return loss_entry(config.loss.name).build(config, train_labels)
