"""MAML's meta-test on held-out classes: per episode, fine-tune on its support set, then classify its queries.

Episodes are those of the embedding methods' evaluation (`navee_jax.evaluate.fewshot.sample_episodes` with
the same pools, ways, shots, queries and seed), and cells have the same form ({"accuracy", "ci95",
"episodes", "queries_per_class"}, or {"skipped": why}), so MAML's numbers sit beside 1-NN / prototype
numbers of any method. The network's head has `sampler.ways` outputs, so the ways are those it was trained
with; each episode is fine-tuned with `loss.eval_inner_steps` steps of the (learned, with Meta-SGD) inner
step sizes, vmapped over episodes and sharded over devices, a few episodes per call (`eval.batch_size`
images at most).

BatchNorm normalises the support set with its own statistics during fine-tuning and the query set with
the query set's, as in meta-training (navee_jax.meta.maml). Episodes whose classes are short of queries
are padded (`Episodes.query_mask`): the padding slots are out of the accuracy but in the query batch's
statistics; on Omniglot's 20 drawings per character there is no padding.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.splits import Split
from navee_jax.evaluate.fewshot import EpisodePool, accuracy_summary
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.meta.maml import adapt_and_predict, make_apply
from navee_jax.meta.train import step_sizes
from navee_jax.train.sharding import batch_sharded, replicated
from navee_jax.train.step import Prepare, TrainState


class FineTuneEpisodes:
    """(state, shots, episodes, seed) -> {"N-way K-shot": cell} for N = `sampler.ways`."""

    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict,
                 graphdef: nnx.GraphDef, mesh: Mesh, prepare: Prepare):
        self.catalogue, self.split, self.config, self.mesh = catalogue, split, config, mesh
        self.support_labels, self.query_labels = catalogue.labels[split.support], catalogue.labels[split.query]
        self._pools: tuple[np.ndarray, np.ndarray] | None = None
        loss_cfg, steps = config.loss, config.loss.eval_inner_steps

        def predict(params, loss_params, model_state, s_images, s_labels, q_images):
            apply_fn, sizes = make_apply(graphdef, model_state), step_sizes(loss_cfg, params, loss_params)
            return jax.vmap(lambda s, y, q: adapt_and_predict(apply_fn, params, sizes, prepare(s), y, prepare(q),
                                                              steps))(s_images, s_labels, q_images)

        repl, shard = replicated(mesh), batch_sharded(mesh)
        self._predict = jax.jit(predict, in_shardings=(repl, repl, repl, shard, shard, shard), out_shardings=repl)

    def pools(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out support and query images (uint8, un-augmented), decoded once."""
        if self._pools is None:
            def load(indices: np.ndarray) -> np.ndarray:
                return np.concatenate(list(eval_batches(self.catalogue, indices, self.config.data,
                                                        self.config.eval.batch_size)))
            self._pools = load(self.split.support), load(self.split.query)
        return self._pools

    def __call__(self, state: TrainState, shots: tuple[int, ...], episodes: int, seed: int) -> dict[str, dict]:
        ways, queries = self.config.sampler.ways, self.config.eval.queries_per_class
        support_pool, query_pool = self.pools()
        report: dict[str, dict[str, Any]] = {}
        pool = EpisodePool(self.support_labels, self.query_labels)
        for shot in shots:
            name = f"{ways}-way {shot}-shot"
            try:
                eps = pool.sample(ways, shot, queries, episodes, seed)
            except ValueError as e:
                report[name] = {"skipped": str(e)}
                continue
            per_episode = eps.support.shape[1] + eps.query.shape[1]
            per_call = -(-max(1, self.config.eval.batch_size // per_episode) // self.mesh.size) * self.mesh.size
            predictions = []
            for start in range(0, episodes, per_call):
                take = np.arange(start, start + per_call) % episodes  # the last call wraps around: fixed shapes
                pred = self._predict(state.params, state.loss_params, state.model_state,
                                     support_pool[eps.support[take]], eps.support_labels[take],
                                     query_pool[eps.query[take]])
                predictions.append(np.asarray(pred)[:episodes - start])
            hits = (np.concatenate(predictions) == eps.query_labels) & eps.query_mask
            report[name] = {**accuracy_summary(hits.sum(axis=1) / eps.query_mask.sum(axis=1)), "episodes": episodes,
                            "queries_per_class": eps.query.shape[1] // ways,
                            "inner_steps": self.config.loss.eval_inner_steps}
        return report


class MamlHeldoutEvaluator(HeldoutEvaluator):
    """The held-out evaluator (retrieval mAP and 1-NN episodes on Conv-4 features, see
    navee_jax.meta.train.make_feature_fn) plus, with `few_shot`, MAML's fine-tuning episodes as
    "few_shot_maml" over the `eval.shots`."""

    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict,
                 embed_fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh, fine_tune: FineTuneEpisodes):
        super().__init__(catalogue, split, config, embed_fn, mesh)
        self.fine_tune = fine_tune

    def __call__(self, state: Any, few_shot: bool = True) -> dict:
        out = super().__call__(state, few_shot)
        if few_shot:
            e = self.config.eval
            out["few_shot_maml"] = self.fine_tune(state, tuple(e.shots), e.episodes, self.config.seed)
        return out
