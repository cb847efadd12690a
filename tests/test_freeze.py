"""Frozen stages keep their weights and BatchNorm statistics bit for bit; the others train."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import triplet
from navee_jax.data.pipeline import train_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.errors import UserError
from navee_jax.models import build_model
from navee_jax.losses import make_objective
from navee_jax.sharding import make_mesh, replicated, shard_step_batch
from navee_jax.embed import image_normalizer
from navee_jax.train.step import init_train_state, make_train_step

FROZEN = ("conv1", "bn1", "layer1", "layer2.0")


def _model(cfg):
    return build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size)


def _leaves_by_path(*states) -> dict[str, np.ndarray]:
    out = {}
    for state in states:
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]:
            out[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


def test_frozen_stages_are_bit_identical_after_training_and_the_rest_moves():
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 4, 8, 16
    cat = digits_catalogue()
    mesh, tx = make_mesh(), optax.adamw(1e-2, weight_decay=0.1)  # decay would move frozen weights if it saw them
    graphdef, _, state = init_train_state(_model(cfg), tx, frozen_stages=FROZEN)
    before = _leaves_by_path(state.params, state.model_state)
    step = make_train_step(graphdef, tx, make_objective(cfg, cat.labels).loss, mesh, image_normalizer(cfg.data), FROZEN)
    state = jax.device_put(state, replicated(mesh))
    for batch in train_batches(cat, np.flatnonzero(cat.labels < 6), cfg, 0, 3):
        state, _ = step(state, shard_step_batch(batch, mesh))
    after = _leaves_by_path(state.params, state.model_state)
    assert before.keys() == after.keys()
    prefixes = ("['backbone']['conv1']", "['backbone']['bn1']", "['backbone']['layer1']", "['backbone']['layer2'][0]")
    frozen = [k for k in before if k.startswith(prefixes)]
    moving = [k for k in before if not k.startswith(prefixes)]
    assert any("mean" in k for k in frozen) and any("kernel" in k for k in frozen)
    for k in frozen:  # weights, BN scale/bias and BN running statistics
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    changed = [k for k in moving if not np.array_equal(after[k], before[k])]
    assert set(changed) == set(moving)  # every trainable tensor and every unfrozen statistic moved
    trained = _leaves_by_path(state.params)
    assert not any(k.startswith(prefixes) for k in trained) and any("layer2'][1]" in k for k in trained)


def test_unknown_stage_is_a_one_line_error_listing_the_stages():
    cfg = triplet.get_config("digits")
    cfg.model.width = 4
    with pytest.raises(UserError, match=r"'layer9' is not a stage of the backbone; stages: \['bn1', 'conv1', "
                                        r"'layer1', 'layer2', 'layer3', 'layer4'\]"):
        init_train_state(_model(cfg), optax.sgd(0.1), frozen_stages=("layer9",))


def test_head_batchnorm_standardises_each_embedding_dimension_in_training():
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.model.head_batchnorm, cfg.model.normalize = 4, 8, True, False
    model = build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size)
    model.train()
    x = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype(np.float32)
    z = np.asarray(model(x))
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1, atol=1e-2)  # eps 1e-5 over small variances
