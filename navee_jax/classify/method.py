"""The classifier as a method of the one trainer: backbone -> linear head with one logit per class of
`data.label_column` (the embedding head of navee_jax.models, sized to the classes, not normalised), softmax
cross-entropy on shuffled batches. On the stratified split it is scored by accuracy on the validation and test
parts of its own classes; on a few-shot split (classes, groups, partial) it is the classical baseline of
transfer: it learns the training classes, and its L2-normalised backbone features (the head dropped) are
evaluated on the held-out classes like any embedding."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import ml_collections
from flax import nnx

from navee_jax.backend import cpu_tuned
from navee_jax.classify.evaluator import ClassificationEvaluator
from navee_jax.classify.network import build_classifier
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import shuffled_batches
from navee_jax.data.splits import Split
from navee_jax.distances import l2_normalize
from navee_jax.embed import ShiftViews, image_normalizer, make_embed_fn
from navee_jax.errors import UserError
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.losses.cross_entropy import classification_loss
from navee_jax.method import Method, Trainer, register_method
from navee_jax.models.stages import frozen_stages
from navee_jax.sharding import check_divisible, replicated
from navee_jax.train.step import init_train_state, make_train_step
from navee_jax.train_state import make_optimizer, make_schedule

LOSS_NAME = "softmax_cross_entropy"


class Classifier(Method):
    name = "classifier"

    def selection(self, config: ml_collections.ConfigDict) -> tuple[str, str]:
        if config.split.mode == "stratified":
            return ("accuracy", "validation accuracy")
        return super().selection(config)

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        if config.loss.name != LOSS_NAME:
            raise UserError(f"loss.name={config.loss.name!r}: method='classifier' trains {LOSS_NAME!r}")
        if config.model.head_batchnorm:
            raise UserError("model.head_batchnorm: the classifier's head is one linear layer; set it to False")
        if config.model.tta_shift_px and config.split.mode == "stratified":
            raise UserError("model.tta_shift_px: averages the embedding of held-out classes; a stratified split's "
                            "classifier is scored by its logits: set it to 0")

    def sampler_kinds(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ("shuffled",)

    def images_per_step(self, config: ml_collections.ConfigDict) -> int:
        return config.sampler.batch_size

    def own_report(self, config: ml_collections.ConfigDict) -> Callable[..., dict] | None:
        if config.split.mode != "stratified":
            return None  # an embedding of held-out classes, reported like any other
        from navee_jax.classify.report import write_classifier_report

        return write_classifier_report

    def recognition_problem(self, config: ml_collections.ConfigDict) -> str | None:
        return ("it holds a classifier, whose outputs are its training classes' logits, not an embedding of new "
                "articles; recognition needs an embedding model (config.method=metric_learning)")

    def build(self, config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split, mesh: jax.sharding.Mesh,
              steps_per_epoch: int) -> Trainer:
        check_divisible(config.sampler.batch_size, mesh, "sampler.batch_size")
        schedule = make_schedule(config.optim, steps_per_epoch)
        tx = make_optimizer(config, schedule)
        prepare = image_normalizer(config.data, config.model.in_channels)
        model = build_classifier(config, len(catalogue.class_names), nnx.Rngs(config.seed), cpu_tuned(mesh))
        frozen = frozen_stages(config.model, model)
        graphdef, eval_graphdef, state = init_train_state(model, tx, config.model.frozen_batchnorm, frozen)
        process = (jax.process_index(), jax.process_count())
        if config.split.mode == "stratified":
            embed_fn = make_embed_fn(eval_graphdef, mesh, prepare)  # the logits
            evaluators = (ClassificationEvaluator(catalogue, split, config, embed_fn, mesh),)
        else:  # held-out classes have no logit that means anything: their features are the embedding
            shifts = ShiftViews.from_config(config)
            embed_fn = make_embed_fn(eval_graphdef, mesh, prepare, forward=lambda m, x: l2_normalize(m.backbone(x)),
                                     shifts=shifts and dataclasses.replace(shifts, renormalize=True))
            evaluators = (HeldoutEvaluator(catalogue, split, config, embed_fn, mesh),)
        return Trainer(
            state=jax.device_put(state, replicated(mesh)),
            train_step=make_train_step(graphdef, tx, classification_loss(config.loss.label_smoothing), mesh,
                                       prepare, frozen),
            batches=lambda epoch, n: shuffled_batches(catalogue, split.train, config, epoch, n, *process),
            replicated_keys=(), schedule=schedule, embed_fn=embed_fn, evaluators=evaluators)


register_method(Classifier())
