"""MAML / Meta-SGD as a method of the one trainer (navee_jax.method): meta-batches of tasks, the meta-step,
and held-out evaluation on Conv-4 features plus fine-tuning on each episode's support set."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import episode_batches
from navee_jax.data.splits import Split
from navee_jax.embed import image_normalizer
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.meta.evaluate import FineTuneEpisodes, FineTuneEvaluator
from navee_jax.meta.train import build_network, check_config, init_state, make_feature_fn, make_meta_step
from navee_jax.method import Method, Trainer, register_method
from navee_jax.sharding import check_divisible, replicated
from navee_jax.train_state import make_optimizer, make_schedule


class Maml(Method):
    name = "maml"

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        check_config(config)

    def sampler_kinds(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ("tasks",)

    def images_per_step(self, config: ml_collections.ConfigDict) -> int:
        s = config.sampler
        return s.tasks_per_batch * s.ways * (s.shots + s.queries)

    def recognition_problem(self, config: ml_collections.ConfigDict) -> str | None:
        # Its BatchNorm never learns running averages for an eval-mode embedding to use.
        return ("it holds a MAML model, which classifies a task's classes after fine-tuning on them; recognition "
                "needs an embedding model (config.method=metric_learning)")

    def build(self, config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split, mesh: jax.sharding.Mesh,
              steps_per_epoch: int) -> Trainer:
        check_divisible(config.sampler.tasks_per_batch, mesh, "sampler.tasks_per_batch")  # the sharded axis
        schedule = make_schedule(config.optim, steps_per_epoch)
        tx = make_optimizer(config, schedule)
        prepare = image_normalizer(config.data, config.model.in_channels)
        graphdef, state = init_state(build_network(config, nnx.Rngs(config.seed)), tx, config.loss)
        feature_fn = make_feature_fn(graphdef, mesh, prepare)
        fine_tune = FineTuneEpisodes(catalogue, split, config, graphdef, mesh, prepare)
        process = (jax.process_index(), jax.process_count())
        return Trainer(
            state=jax.device_put(state, replicated(mesh)),
            train_step=make_meta_step(graphdef, tx, mesh, prepare, config),
            batches=lambda epoch, n: episode_batches(catalogue, split.train, config, epoch, n, *process),
            replicated_keys=(),  # every array of a meta-batch is split on its task axis
            schedule=schedule, embed_fn=feature_fn,
            evaluators=(HeldoutEvaluator(catalogue, split, config, feature_fn, mesh),
                        FineTuneEvaluator(fine_tune, config)),
            protocol_cells=lambda state, episodes, seed: fine_tune(state, (1, 5), episodes, seed))


register_method(Maml())
