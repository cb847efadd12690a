"""The held-out evaluator: embed support + query once, then retrieval mAP (`eval.metric`) and N-way K-shot
1-NN episodes over `eval.shots`."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.embed import embed_in_batches
from navee_jax.data.splits import Split
from navee_jax.evaluate.fewshot import few_shot_report
from navee_jax.errors import UserError
from navee_jax.evaluate.retrieval import retrieval_metrics
from navee_jax.losses.registry import Distance


class HeldoutEvaluator:
    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict,
                 embed_fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh,
                 distance_of: Callable[[Any], Distance] | None = None):
        """`distance_of(state)`: the method's own ranking of images (its loss's, e.g. a verification
        head's) for retrieval and 1-NN; None ranks by `eval.metric` on the embeddings."""
        e = config.eval
        if e.ways < 2 or min(e.shots, default=0) < 1 or e.queries_per_class < 1 or e.episodes < 1:
            raise UserError(f"eval: an episode needs ways >= 2, shots >= 1, queries_per_class >= 1 and episodes "
                            f">= 1; got ways={e.ways}, shots={tuple(e.shots)}, queries_per_class="
                            f"{e.queries_per_class}, episodes={e.episodes}")
        self.catalogue, self.config, self.embed_fn, self.mesh = catalogue, config, embed_fn, mesh
        self.distance_of = distance_of
        self.images = np.concatenate([split.support, split.query])
        self.labels = catalogue.labels[self.images]
        self.num_support = len(split.support)

    def embed(self, state: Any) -> np.ndarray:
        """Embeddings of support then query images."""
        bs = self.config.eval.batch_size
        emb = embed_in_batches(self.embed_fn, state, eval_batches(self.catalogue, self.images, self.config.data, bs),
                               bs, self.mesh)
        if not np.isfinite(emb).all():
            raise UserError("held-out embeddings contain NaN/inf: the model diverged or the inputs are not "
                            "finite; check data.mean/std and lower --config.optim.lr")
        return emb

    def run(self, state: Any, final: bool) -> Iterator[tuple[str, Any]]:
        """("map", held-out mAP), ("queries_scored", n) and, when `final`, ("few_shot", cell) per shot count."""
        emb = self.embed(state)
        s, q = slice(None, self.num_support), slice(self.num_support, None)
        e = self.config.eval
        distance = None if self.distance_of is None else self.distance_of(state)
        retrieval = retrieval_metrics(emb[q], self.labels[q], emb[s], self.labels[s], metric=e.metric, ks=(),
                                      distance=distance)
        yield "map", retrieval["map"]
        yield "queries_scored", retrieval["queries_scored"]
        if final:
            for cell in few_shot_report(emb[s], self.labels[s], emb[q], self.labels[q], e.ways, tuple(e.shots),
                                        e.queries_per_class, e.episodes, self.config.seed, distance=distance):
                yield "few_shot", cell
