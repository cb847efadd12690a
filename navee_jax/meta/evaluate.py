"""MAML's meta-test on held-out classes: per episode, fine-tune on its support set, then classify its queries.

Episodes are those of the embedding methods' evaluation (navee_jax.data.episodes.EpisodeSampler with the same
pools, ways, shots, queries and seed), and cells are the same records (navee_jax.evaluate.records, classifier
"maml fine-tuning"), so MAML's numbers sit beside 1-NN / prototype numbers of any method. The network's head
has `sampler.ways` outputs, so the ways are those it was trained with; each episode is fine-tuned with
`loss.eval_inner_steps` steps of the (learned, with Meta-SGD) inner step sizes, vmapped over episodes and
sharded over devices, a few episodes per call (`eval.batch_size` images at most).

BatchNorm normalises the support set with its own statistics during fine-tuning and the query set with
the query set's, as in meta-training (navee_jax.meta.maml). Episodes whose classes are short of queries
are padded (`Episodes.query_mask`): the padding slots are out of the accuracy but in the query batch's
statistics; on Omniglot's 20 drawings per character there is no padding.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.splits import Split
from navee_jax.data.episodes import EpisodeSampler
from navee_jax.evaluate.records import FewShotCell
from navee_jax.meta.maml import adapt_and_predict, make_apply
from navee_jax.meta.train import step_sizes
from navee_jax.sharding import batch_sharded, replicated
from navee_jax.embed import Prepare
from navee_jax.train_state import TrainState


class FineTuneEpisodes:
    """(state, shots, episodes, seed) -> a "maml fine-tuning" cell per shot count, N = `sampler.ways`."""

    CLASSIFIER = "maml fine-tuning"

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

    def __call__(self, state: TrainState, shots: tuple[int, ...], episodes: int, seed: int) -> list[FewShotCell]:
        ways, queries = self.config.sampler.ways, self.config.eval.queries_per_class
        support_pool, query_pool = self.pools()
        cells = []
        sampler = EpisodeSampler(self.support_labels, self.query_labels)
        for shot in shots:
            try:
                eps = sampler.sample(ways, shot, queries, episodes, np.random.default_rng([seed, ways, shot]))
            except ValueError as e:
                cells.append(FewShotCell.skip(ways, shot, self.CLASSIFIER, episodes, str(e)))
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
            cells.append(FewShotCell.from_accuracies(ways, shot, self.CLASSIFIER,
                                                     hits.sum(axis=1) / eps.query_mask.sum(axis=1),
                                                     eps.query.shape[1] // ways,
                                                     inner_steps=self.config.loss.eval_inner_steps))
        return cells


class FineTuneEvaluator:
    """With `final`, MAML's fine-tuning episodes over `eval.shots` as ("few_shot", cell) results."""

    def __init__(self, fine_tune: FineTuneEpisodes, config: ml_collections.ConfigDict):
        self.fine_tune, self.config = fine_tune, config

    def run(self, state: Any, final: bool) -> Iterator[tuple[str, Any]]:
        if final:
            e = self.config.eval
            for cell in self.fine_tune(state, tuple(e.shots), e.episodes, self.config.seed):
                yield "few_shot", cell
