"""Top-tuning (`method='top_tune'`): the backbone is frozen (`model.pretrained`'s weights, or its initial ones),
its features of the training images are computed once (`top.views` of each: the plain image, then augmented
ones) and cached on disk (navee_jax.toptune.cache), and the embedding head trains on them with any loss of PK
batches. One epoch is the head on (B, D) features instead of the backbone on images. The trained model is
the usual EmbeddingNet (backbone + head): evaluation, checkpoints and the Recognizer use it unchanged.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import pk_indices
from navee_jax.data.splits import Split
from navee_jax.embed import ShiftViews, image_normalizer, make_embed_fn
from navee_jax.errors import UserError
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.losses import loss_entry, make_objective
from navee_jax.method import Method, Trainer, register_method
from navee_jax.models import build_model
from navee_jax.models.stages import stage_names
from navee_jax.sharding import check_divisible, process_share, replicated
from navee_jax.toptune.cache import cache_key, cached_features
from navee_jax.train.method import images_per_step
from navee_jax.train.step import init_train_state, make_train_step
from navee_jax.train_state import make_optimizer, make_schedule


def feature_batches(features: np.ndarray, labels: np.ndarray, pool: np.ndarray, config: ml_collections.ConfigDict,
                    epoch: int, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """PK batches {"images": (B, D) cached features, "labels": (B,)}: pk_indices' images of the pool, each as one
    of its views drawn at random (features[v, i] is view v of pool[i])."""
    rng = np.random.default_rng([config.seed, 7, epoch])
    position = np.full(len(labels), -1)
    position[pool] = np.arange(len(pool))
    chosen = pk_indices(labels, pool, config.sampler.classes_per_batch, config.sampler.images_per_class,
                        num_batches, rng)
    views = rng.integers(features.shape[0], size=chosen.shape)
    share = (jax.process_index(), jax.process_count())
    for b in range(num_batches):
        yield {"images": process_share(features[views[b], position[chosen[b]]], *share),
               "labels": process_share(labels[chosen[b]].astype(np.int32), *share)}


class TopTune(Method):
    name = "top_tune"

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        if loss_entry(config.loss.name).distance is not None:
            raise UserError(f"loss.name={config.loss.name!r} ranks images by a head of its own, which top-tuning "
                            f"does not train; use an embedding loss (triplet, multi_similarity, proxy_anchor, ...)")
        if "pk" not in loss_entry(config.loss.name).samplers:
            raise UserError(f"loss.name={config.loss.name!r} does not train on PK batches, which top-tuning draws "
                            f"from its cached features; use triplet, multi_similarity, proxy_anchor, ...")
        if not config.model.embed_dim:
            raise UserError("model.embed_dim=0: top-tuning trains the head, so it needs one (e.g. 128)")
        if config.model.frozen_stages or config.model.train_last_blocks >= 0:
            raise UserError("model.frozen_stages / model.train_last_blocks: top-tuning freezes the whole backbone; "
                            "unfreeze blocks in a second run from this one (model.init_workdir, configs/top_tune.py)")

    def sampler_kinds(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ("pk",)

    def images_per_step(self, config: ml_collections.ConfigDict) -> int:
        return images_per_step(config)  # sampler.kind is 'pk' (sampler_kinds)

    def build(self, config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split, mesh: jax.sharding.Mesh,
              steps_per_epoch: int) -> Trainer:
        check_divisible(self.images_per_step(config), mesh, "the images per PK batch")
        objective = make_objective(config, catalogue.labels[split.train])
        schedule = make_schedule(config.optim, steps_per_epoch)
        tx = make_optimizer(config, schedule)
        prepare = image_normalizer(config.data, config.model.in_channels)
        model = build_model(config.model, nnx.Rngs(config.seed), config.data.image_size)
        frozen = tuple(stage_names(model))  # the whole backbone: its weights live in the state's model_state
        loss_params = objective.init_params(jax.random.key(config.seed), model.out_features)
        graphdef, eval_graphdef, state = init_train_state(model, tx, config.model.frozen_batchnorm, frozen,
                                                          loss_params)
        state = jax.device_put(state, replicated(mesh))
        backbone_fn = make_embed_fn(eval_graphdef, mesh, prepare, forward=lambda m, x: m.backbone(x))

        @functools.cache  # when training first asks for a batch: --mode=evaluate never needs the features
        def features() -> np.ndarray:
            key = cache_key(catalogue, split.train, state.model_state["backbone"], config, config.top.views)
            out, hit = cached_features(catalogue, split.train, config, key, lambda im: backbone_fn(state, im),
                                       config.top.views, config.top.cache_dir)
            print(f"feature cache: {out.shape[0]} view(s) of {out.shape[1]} training images, {out.shape[2]} "
                  f"features each, {'read from' if hit else 'computed into'} {config.top.cache_dir}/{key[:12]}...npy",
                  flush=True)
            return out

        embed_fn = make_embed_fn(eval_graphdef, mesh, prepare, shifts=ShiftViews.from_config(config))
        return Trainer(
            state=state,
            train_step=make_train_step(graphdef, tx, objective.loss, mesh, None, frozen,
                                       forward=lambda m, f: m.embed_features(f), item_ndim=1),
            batches=lambda epoch, n: feature_batches(features(), catalogue.labels, split.train, config, epoch, n),
            replicated_keys=(), schedule=schedule, embed_fn=embed_fn,
            evaluators=(HeldoutEvaluator(catalogue, split, config, embed_fn, mesh),))


register_method(TopTune())
