"""Metric learning, the method of every embedding loss: embed a batch, apply `loss.name`'s loss, step.

The loss comes from the loss registry (navee_jax.losses.registry) and trains on the `sampler.kind` batches
it names; the held-out evaluator measures retrieval mAP and 1-NN episodes on the embedding.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from navee_jax.backend import cpu_tuned
from navee_jax.checkpoints import start_from_workdir
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import episode_batches, train_batches, tuple_batches
from navee_jax.data.splits import Split
from navee_jax.embed import ShiftViews, image_normalizer, make_embed_fn
from navee_jax.errors import UserError
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.losses import loss_entry, make_objective
from navee_jax.losses.registry import Distance
from navee_jax.method import Method, Trainer, register_method
from navee_jax.models import build_model
from navee_jax.models.stages import frozen_stages
from navee_jax.sharding import check_divisible, replicated
from navee_jax.train.step import init_train_state, make_train_step
from navee_jax.train.whitening import make_refit
from navee_jax.train_state import make_optimizer, make_schedule


def images_per_step(config: ml_collections.ConfigDict) -> int:
    """How many images one global batch of `config.sampler.kind` holds."""
    s = config.sampler
    return {"pk": s.classes_per_batch * s.images_per_class, "pairs": 2 * s.tuples_per_batch,
            "triplets": 3 * s.tuples_per_batch, "episodes": s.ways * (s.shots + s.queries)}[s.kind]


def epoch_batches(catalogue: Catalogue, pool: np.ndarray, config: ml_collections.ConfigDict, epoch: int,
                  num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of `config.sampler.kind` batches from `pool`, this process's share of each, in the train
    step's form (an episode's support then query images form one `images` array, embedded in one pass)."""
    kind, process = config.sampler.kind, (jax.process_index(), jax.process_count())
    if kind == "pk":
        return train_batches(catalogue, pool, config, epoch, num_batches, *process)
    if kind in ("pairs", "triplets"):
        return tuple_batches(catalogue, pool, config, epoch, num_batches, kind, *process)
    return episode_batches(catalogue, pool, config, epoch, num_batches, *process)


class MetricLearning(Method):
    name = "metric_learning"

    def sampler_kinds(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return loss_entry(config.loss.name).samplers

    def images_per_step(self, config: ml_collections.ConfigDict) -> int:
        return images_per_step(config)

    def recognition_problem(self, config: ml_collections.ConfigDict) -> str | None:
        try:
            loss_entry(config.loss.name)
        except UserError as e:
            return str(e)
        return None

    def recognition_distance(self, config: ml_collections.ConfigDict, loss_params: dict) -> Distance | None:
        distance = loss_entry(config.loss.name).distance if "loss" in config else None  # no loss: a bare model
        if distance is None:
            return None
        if not loss_params:
            raise UserError(f"loss.name={config.loss.name!r} ranks images by its learned parameters, and none were "
                            f"given: load the model with Recognizer.load(<workdir>)")
        return distance(loss_params)

    def build(self, config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split, mesh: jax.sharding.Mesh,
              steps_per_epoch: int) -> Trainer:
        check_divisible(images_per_step(config), mesh, f"the images per {config.sampler.kind} batch")
        objective = make_objective(config, catalogue.labels[split.train])
        schedule = make_schedule(config.optim, steps_per_epoch)
        tx = make_optimizer(config, schedule)
        prepare = image_normalizer(config.data, config.model.in_channels)
        model = build_model(config.model, nnx.Rngs(config.seed), config.data.image_size, cpu_tuned=cpu_tuned(mesh))
        if config.model.init_workdir:
            print(f"model: starts from {start_from_workdir(model, config.model.init_workdir)}", flush=True)
        frozen = frozen_stages(config.model, model)
        loss_params = objective.init_params(jax.random.key(config.seed), model.out_features)
        graphdef, eval_graphdef, state = init_train_state(model, tx, config.model.frozen_batchnorm, frozen,
                                                          loss_params)
        embed_fn = make_embed_fn(eval_graphdef, mesh, prepare, shifts=ShiftViews.from_config(config))
        # A loss with its own ranking (a verification head) is evaluated by it, with the state's parameters.
        distance = loss_entry(config.loss.name).distance
        distance_of = None if distance is None else (lambda state: distance(state.loss_params))
        return Trainer(
            state=jax.device_put(state, replicated(mesh)),
            train_step=make_train_step(graphdef, tx, objective.loss, mesh, prepare, frozen),
            batches=lambda epoch, n: epoch_batches(catalogue, split.train, config, epoch, n),
            # an episode's images are split between processes, its labels are not
            replicated_keys=("support_labels", "query_labels") if config.sampler.kind == "episodes" else (),
            schedule=schedule, embed_fn=embed_fn,
            evaluators=(HeldoutEvaluator(catalogue, split, config, embed_fn, mesh, distance_of),),
            distance_of=distance_of,
            refit=make_refit(catalogue, split.train, config, eval_graphdef, mesh, prepare) if config.model.whiten
            else None)


register_method(MetricLearning())
