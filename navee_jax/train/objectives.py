"""What a method trains on and minimises: `config.loss` + `config.sampler.kind` -> an `Objective`.

The train step embeds `batch["images"]` of any leading shape ((B,) PK batches, (n, 2) pairs, (n, 3)
triplets, (N*(K+Q),) an episode's support then queries) and hands the embeddings, shaped like those
leading axes, to `Objective.loss` with the batch and the loss's own learned parameters (proxy-anchor's
proxies; empty for every other loss). MAML's loss is a function of the network's parameters, not of
embeddings: its objective has no `loss` and the loop runs its meta-step (navee_jax.meta.train) on
'tasks' batches, meta-batches of episodes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import episode_batches, train_batches, tuple_batches
from navee_jax.errors import UserError
from navee_jax.losses import (
    contrastive_batch_loss,
    contrastive_pair_loss,
    init_proxies,
    multi_similarity_loss,
    prototypical_loss,
    proxy_anchor_loss,
    sampled_triplet_loss,
    triplet_loss,
)

LossOnBatch = Callable[[jax.Array, dict[str, jax.Array], dict[str, jax.Array]], tuple[jax.Array, dict]]

# loss.name -> the sampler kinds it trains on (the first is what its config uses)
SAMPLERS = {
    "triplet": ("pk", "triplets"),
    "contrastive": ("pairs", "pk"),
    "protonet": ("episodes",),
    "multi_similarity": ("pk",),
    "proxy_anchor": ("pk",),
    "maml": ("tasks",),
}


@dataclasses.dataclass(frozen=True)
class Objective:
    sampler: str  # "pk" | "pairs" | "triplets" | "episodes" | "tasks"
    loss: LossOnBatch | None  # None for MAML (navee_jax.meta)
    init_params: Callable[[jax.Array], dict[str, jax.Array]]  # PRNG key -> the loss's learned parameters


def _no_params(_key: jax.Array) -> dict[str, jax.Array]:
    return {}


def make_objective(config: ml_collections.ConfigDict, train_labels: np.ndarray) -> Objective:
    """The objective of `config.loss` on `config.sampler.kind` batches; `train_labels` (the catalogue
    labels of the training images) fix proxy-anchor's one proxy per training class."""
    loss, kind = config.loss, config.sampler.kind
    if loss.name not in SAMPLERS:
        raise UserError(f"loss.name: unknown loss {loss.name!r}; available: {sorted(SAMPLERS)}")
    if kind not in SAMPLERS[loss.name]:
        raise UserError(f"sampler.kind={kind!r} does not feed loss.name={loss.name!r}; use one of "
                        f"{list(SAMPLERS[loss.name])}")
    if loss.name == "maml":
        return Objective(kind, None, _no_params)
    if loss.name == "triplet":
        if kind == "triplets":
            def on_triplets(emb, batch, _):
                return sampled_triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], loss.margin, loss.metric)
            return Objective(kind, on_triplets, _no_params)
        return Objective(kind, lambda emb, batch, _: triplet_loss(emb, batch["labels"], loss.margin, loss.miner,
                                                                  loss.metric, loss.top_fraction), _no_params)
    if loss.name == "contrastive":
        if kind == "pairs":
            return Objective(kind, lambda emb, batch, _: contrastive_pair_loss(
                emb[:, 0], emb[:, 1], batch["same"], loss.margin, loss.p_mining), _no_params)
        return Objective(kind, lambda emb, batch, _: contrastive_batch_loss(
            emb, batch["labels"], loss.margin, loss.p_mining), _no_params)
    if loss.name == "protonet":
        s = config.sampler
        n_support = s.ways * s.shots

        def on_episode(emb, batch, _):
            return prototypical_loss(emb[:n_support], batch["support_labels"], emb[n_support:], batch["query_labels"],
                                     s.ways, loss.metric)
        return Objective(kind, on_episode, _no_params)
    if loss.name == "multi_similarity":
        return Objective(kind, lambda emb, batch, _: multi_similarity_loss(
            emb, batch["labels"], loss.alpha, loss.beta, loss.base, loss.epsilon), _no_params)
    # proxy_anchor: proxies for the training classes only, indexed by a catalogue-label -> row table
    classes = np.unique(train_labels)
    row = np.full(int(train_labels.max()) + 1, -1, np.int32)
    row[classes] = np.arange(len(classes))
    row_of = jnp.asarray(row)
    dim = config.model.embed_dim

    def on_pk(emb, batch, params):
        return proxy_anchor_loss(emb, row_of[batch["labels"]], params["proxies"], loss.alpha, loss.delta)
    return Objective(kind, on_pk, lambda key: {"proxies": init_proxies(key, len(classes), dim)})


def images_per_step(config: ml_collections.ConfigDict) -> int:
    """How many images one global batch of `config.sampler.kind` holds."""
    s = config.sampler
    return {"pk": s.classes_per_batch * s.images_per_class, "pairs": 2 * s.tuples_per_batch,
            "triplets": 3 * s.tuples_per_batch, "episodes": s.ways * (s.shots + s.queries),
            "tasks": s.tasks_per_batch * s.ways * (s.shots + s.queries)}[s.kind]


def epoch_batches(catalogue: Catalogue, pool: np.ndarray, config: ml_collections.ConfigDict, epoch: int,
                  num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of `config.sampler.kind` batches from `pool`, in the train step's form (an episode's
    support and query images become one `images` array, support first, embedded in one pass; 'tasks'
    stacks `sampler.tasks_per_batch` consecutive episodes on a leading task axis)."""
    kind, process = config.sampler.kind, (jax.process_index(), jax.process_count())
    if kind == "pk":
        return train_batches(catalogue, pool, config, epoch, num_batches, *process)
    if kind in ("pairs", "triplets"):
        return tuple_batches(catalogue, pool, config, epoch, num_batches, kind, *process)
    if process[1] > 1:
        raise UserError(f"sampler.kind={kind!r} runs in a single process; use one host (all its devices)")
    if kind == "tasks":
        return _meta_batches(catalogue, pool, config, epoch, num_batches)
    return ({"images": np.concatenate([e["support_images"], e["query_images"]]),
             "support_labels": e["support_labels"], "query_labels": e["query_labels"]}
            for e in episode_batches(catalogue, pool, config, epoch, num_batches))


def _meta_batches(catalogue: Catalogue, pool: np.ndarray, config: ml_collections.ConfigDict, epoch: int,
                  num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """Meta-batches of T episodes: images (T, N*(K+Q), S, S, 3), support_labels (T, N*K), query_labels (T, N*Q)."""
    tasks = config.sampler.tasks_per_batch
    episodes = episode_batches(catalogue, pool, config, epoch, num_batches * tasks)
    for _ in range(num_batches):
        meta_batch = [next(episodes) for _ in range(tasks)]
        yield {"images": np.stack([np.concatenate([e["support_images"], e["query_images"]]) for e in meta_batch]),
               "support_labels": np.stack([e["support_labels"] for e in meta_batch]),
               "query_labels": np.stack([e["query_labels"] for e in meta_batch])}
