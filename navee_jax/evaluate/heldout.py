"""The held-out evaluator: embed support + query once, then retrieval mAP and the episode grid."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches, process_share
from navee_jax.data.splits import Split
from navee_jax.evaluate.fewshot import few_shot_report
from navee_jax.errors import UserError
from navee_jax.evaluate.retrieval import mean_average_precision
from navee_jax.train.sharding import shard_batch


def embed_in_batches(embed_fn: Callable[[Any, jax.Array], jax.Array], state: Any, batches: Iterable[np.ndarray],
                     batch_size: int, mesh: Mesh) -> np.ndarray:
    """(n, d) embeddings of image batches of at most `batch_size`, each run as one fixed-size sharded batch
    (one compiled shape) and cut back to its length."""
    out = []
    for images in batches:
        n = len(images)
        # Padded with copies of the batch's own images, not zeros: a network whose BatchNorm uses batch
        # statistics (MAML) would otherwise normalise with statistics of blank images.
        padded = np.concatenate([images, images[np.arange(batch_size - n) % n]])
        # Multi-host: each process feeds its share of the batch; the embeddings come back replicated.
        share = process_share(padded, jax.process_index(), jax.process_count())
        out.append(np.asarray(embed_fn(state, shard_batch(share, mesh)))[:n])
    return np.concatenate(out)


class HeldoutEvaluator:
    def __init__(self, catalogue: Catalogue, split: Split, config: ml_collections.ConfigDict,
                 embed_fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh):
        e = config.eval
        if e.ways < 2 or min(e.shots, default=0) < 1 or e.queries_per_class < 1 or e.episodes < 1:
            raise UserError(f"eval: an episode needs ways >= 2, shots >= 1, queries_per_class >= 1 and episodes "
                            f">= 1; got ways={e.ways}, shots={tuple(e.shots)}, queries_per_class="
                            f"{e.queries_per_class}, episodes={e.episodes}")
        self.catalogue, self.config, self.embed_fn, self.mesh = catalogue, config, embed_fn, mesh
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

    def __call__(self, state: Any, few_shot: bool = True) -> dict:
        """{"map", "queries_scored"} and, with `few_shot`, {"few_shot_1nn": {"4-way 1-shot": ...}}."""
        emb = self.embed(state)
        s, q = slice(None, self.num_support), slice(self.num_support, None)
        m, scored = mean_average_precision(emb[q], self.labels[q], emb[s], self.labels[s])
        out = {"map": m, "queries_scored": scored}
        if few_shot:
            e = self.config.eval
            out["few_shot_1nn"] = few_shot_report(emb[s], self.labels[s], emb[q], self.labels[q], e.ways,
                                                  tuple(e.shots), e.queries_per_class, e.episodes, self.config.seed)
        return out
