"""The Method seam: everything a training method gives the one loop, chosen by name (`config.method`).

A method turns a config, the data and the mesh into a `Trainer`: its initial state, its jitted step, the
batches it trains on, the function that embeds images with its state, and the held-out evaluators it wants.
The loop (navee_jax.launcher.train), `--mode=evaluate` and recognition only ever talk to these objects, so a
method with its own step (MAML's meta-step) needs no code of its own anywhere else.

Built-in methods are imported by module name when first asked for (big_vision's way of choosing a model
by name), so this core module depends on none of them; `register_method` adds others (e.g. a test's).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from navee_jax.embed import EmbedFn
from navee_jax.errors import UserError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One method, built for one config on one mesh."""

    state: Any  # the initial (or pretrained) train state, replicated on the mesh; checkpoints restore into it
    train_step: Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]  # jitted
    batches: Callable[[int, int], Iterator[Batch]]  # (epoch, num_batches) -> this process's share of each batch
    replicated_keys: tuple[str, ...]  # batch arrays that are whole on every process; the others are sharded
    schedule: Callable[[int], float]  # the learning rate at a step, for the progress lines
    embed_fn: EmbedFn  # the features retrieval, few-shot episodes and --mode=evaluate are computed on
    # Per epoch and at the end: each evaluator's run(state, final) yields flat (key, value) results
    # (navee_jax.evaluate.evaluator); the first one's "map" picks the best checkpoint.
    evaluators: tuple[Any, ...]
    # --mode=evaluate: (state, episodes, seed) -> extra standard-protocol cells of the method's own
    # classifier (e.g. fine-tuning on each episode); None when the method has none.
    protocol_cells: Callable[[Any, int, int], list[Any]] | None = None
    # state -> the method's own ranking of images, (queries (n, d), gallery (m, d)) -> (n, m) non-negative
    # distances (e.g. a verification head's), used by retrieval and 1-NN; None: eval.metric on the embeddings.
    distance_of: Callable[[Any], Callable[[jax.Array, jax.Array], jax.Array]] | None = None
    # state -> the state with its fitted (not trained) statistics refitted on training images (model.whiten's
    # whitening), before every evaluation and checkpoint of training; None when the model has none.
    refit: Callable[[Any], Any] | None = None


class Method(abc.ABC):
    """A training method; subclasses are registered by name."""

    name: str = ""

    def selection(self, config: ml_collections.ConfigDict) -> tuple[str, str]:
        """(the key of the first evaluator's results that picks the best checkpoint, how progress lines name
        it)."""
        return ("map", "held-out mAP")

    def check_config(self, config: ml_collections.ConfigDict) -> None:  # noqa: B027 (optional to override)
        """One-line UserError for a setting this method cannot honour, before any data loads."""

    @abc.abstractmethod
    def sampler_kinds(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """The `sampler.kind`s this method (with this config's loss) trains on."""

    @abc.abstractmethod
    def images_per_step(self, config: ml_collections.ConfigDict) -> int:
        """Images in one global batch (the default epoch is the training images over this)."""

    @abc.abstractmethod
    def build(self, config: ml_collections.ConfigDict, catalogue: Any, split: Any, mesh: jax.sharding.Mesh,
              steps_per_epoch: int) -> Trainer:
        """The trainer for the training images `split.train` of `catalogue`; epochs of `steps_per_epoch`."""

    def own_report(self, config: ml_collections.ConfigDict) -> Callable[..., dict] | None:
        """`--mode=evaluate`'s report when this method is not scored as an embedding of held-out classes (e.g. a
        classifier on its own classes): (config, catalogue, split, workdir, checkpoint) -> results; None: the
        held-out report every embedding gets."""
        return None

    def recognition_problem(self, config: ml_collections.ConfigDict) -> str | None:
        """Why a workdir trained with this method cannot serve recognition (None: it can)."""
        return None

    def recognition_distance(self, config: ml_collections.ConfigDict,
                             loss_params: dict[str, Any]) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
        """The trained model's own ranking of images from its restored loss parameters, for the recognizer's
        gallery (as `Trainer.distance_of` is for the evaluators); None: Euclidean distance."""
        return None


BUILT_IN = {"metric_learning": "navee_jax.train.method", "maml": "navee_jax.meta.method",
            "classifier": "navee_jax.classify.method", "top_tune": "navee_jax.toptune.method"}
_registered: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Makes `method` available as `config.method=<method.name>`; returns it."""
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    _registered[method.name] = method
    return method


def available_methods() -> list[str]:
    return sorted(set(BUILT_IN) | set(_registered))


def method_named(name: str) -> Method:
    if name not in _registered and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])  # registers itself
    if name not in _registered:
        raise UserError(f"method: unknown method {name!r}; available: {available_methods()}")
    return _registered[name]


def method_of(config: ml_collections.ConfigDict) -> Method:
    """The config's method (workdirs written before `method` existed trained metric learning)."""
    return method_named(config.get("method", "metric_learning"))
