"""A trained classifier read back from its workdir, for what comes after training: class probabilities and
the backbone's features of any catalogue images (feature classifiers, ensembles, layer removal), and the
category of new photos (the recognizer)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from scipy.special import softmax

from navee_jax.checkpoints import load_weights_into, restore_arrays
from navee_jax.classify.network import build_classifier
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches
from navee_jax.embed import embed_in_batches, image_normalizer, make_embed_fn
from navee_jax.errors import UserError
from navee_jax.method import method_of
from navee_jax.recorded_config import read_config
from navee_jax.sharding import make_mesh
from navee_jax.train_state import TrainState


@dataclasses.dataclass
class TrainedClassifier:
    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    checkpoint: str  # the checkpoint folder the weights came from
    model: nnx.Module

    def __post_init__(self):
        self.mesh = make_mesh()
        self.model.eval()
        graphdef, params, rest = nnx.split(self.model, nnx.Param, ...)
        prepare = image_normalizer(self.config.data, self.config.model.in_channels)
        self._state = TrainState(np.zeros((), np.int32), params, rest, {}, ())  # only params and model_state read
        self._graphdef, self._prepare, self._truncated = graphdef, prepare, {}
        self._logits = make_embed_fn(graphdef, self.mesh, prepare)
        # the logits of each image and of its mirror image side by side (test-time flip averaging)
        self._mirrored_logits = make_embed_fn(graphdef, self.mesh, prepare,
                                              forward=lambda m, x: jnp.concatenate([m(x), m(x[:, :, ::-1])], axis=1))
        self._features = make_embed_fn(graphdef, self.mesh, prepare, forward=lambda m, x: m.backbone(x))

    @classmethod
    def load(cls, workdir: str, checkpoint: str = "best") -> TrainedClassifier:
        """From a `method='classifier'` workdir; "best" is the best validation accuracy."""
        config = read_config(workdir)
        if config.method != "classifier":
            raise UserError(f"workdir {workdir!r} was trained with method={config.method!r}, not 'classifier'")
        with open(os.path.join(workdir, "splits.json")) as f:
            class_names = tuple(json.load(f)["class_names"])  # in the order of the head's outputs
        step, restored = restore_arrays(workdir, checkpoint, method_of(config).selection(config)[0])
        config.model.pretrained = ""  # the checkpoint holds every weight
        model = build_classifier(config, len(class_names), nnx.Rngs(config.seed))
        where = os.path.join(workdir, "checkpoints", str(step))
        load_weights_into(model, restored, where)
        return cls(config, class_names, where, model)

    def _run(self, fn, catalogue: Catalogue, indices: np.ndarray) -> np.ndarray:
        bs = self.config.eval.batch_size
        out = embed_in_batches(fn, self._state, eval_batches(catalogue, np.asarray(indices), self.config.data, bs),
                               bs, self.mesh)
        return np.asarray(jax.device_get(out), np.float32)

    def probabilities(self, catalogue: Catalogue, indices: np.ndarray, mirrored: bool = False) -> np.ndarray:
        """(n, C) softmax probabilities of the catalogue images at `indices` (un-augmented); `mirrored`: the mean
        of each image's and its left-right mirror image's (for a network trained with data.flip)."""
        if not mirrored:
            return softmax(self._run(self._logits, catalogue, indices), axis=1)
        both = self._run(self._mirrored_logits, catalogue, indices)
        n_classes = both.shape[1] // 2
        return (softmax(both[:, :n_classes], axis=1) + softmax(both[:, n_classes:], axis=1)) / 2

    def features(self, catalogue: Catalogue, indices: np.ndarray) -> np.ndarray:
        """(n, D) backbone features (before the class head) of the catalogue images at `indices`."""
        return self._run(self._features, catalogue, indices)

    def truncated_features(self, catalogue: Catalogue, indices: np.ndarray, removed: int) -> np.ndarray:
        """(n, D) outputs with the top `removed` layers taken off (navee_jax.classify.layer_removal)."""
        from navee_jax.classify.layer_removal import truncated_forward

        if removed not in self._truncated:  # one compiled function per depth, whatever the images
            self._truncated[removed] = make_embed_fn(self._graphdef, self.mesh, self._prepare,
                                                     forward=truncated_forward(self.model, removed))
        return self._run(self._truncated[removed], catalogue, indices)
