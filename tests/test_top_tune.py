"""Top-tuning: the feature cache's key follows every input of the features, a hit embeds nothing, and one step of
the head on cached features is the step of the whole network, backbone frozen, on the images."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import top_tune
from conftest import write_image
from navee_jax.data.pipeline import eval_batches, pk_indices
from navee_jax.data.sources import folder_catalogue
from navee_jax.embed import image_normalizer
from navee_jax.errors import UserError
from navee_jax.launcher.config_check import check_config
from navee_jax.launcher.train import build_setup
from navee_jax.losses import make_objective
from navee_jax.models import build_model
from navee_jax.models.stages import stage_names
from navee_jax.sharding import replicated, shard_step_batch
from navee_jax.toptune.cache import cache_key, cached_features
from navee_jax.train.step import init_train_state, make_train_step


def _config():
    cfg = top_tune.get_config("digits")
    cfg.model.backbone, cfg.model.embed_dim, cfg.data.image_size = "conv4", 16, 16
    cfg.sampler.classes_per_batch, cfg.sampler.images_per_class = 4, 4
    return cfg


def test_the_cache_key_follows_images_weights_and_settings_and_a_hit_embeds_nothing(image_folder, tmp_path):
    cat = folder_catalogue(str(image_folder))
    idx = np.arange(len(cat))
    cfg = _config()
    weights = {"w": np.arange(6.0).reshape(2, 3)}
    key = cache_key(cat, idx, weights, cfg, views=1)
    assert cache_key(cat, idx, {"w": np.arange(6.0).reshape(2, 3)}, cfg, views=1) == key
    assert cache_key(cat, idx, {"w": np.arange(6.0).reshape(2, 3) + 1e-3}, cfg, views=1) != key  # another model
    assert cache_key(cat, idx, weights, cfg, views=2) != key
    cfg.data.flip = not cfg.data.flip
    assert cache_key(cat, idx, weights, cfg, views=1) != key  # another augmentation
    cfg.data.flip = not cfg.data.flip
    write_image(cat.paths[5], seed=99)  # a changed image file
    changed = cache_key(cat, idx, weights, cfg, views=1)
    assert changed != key

    calls = []

    def embed(images):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :5].astype(np.float32)

    cfg.data.image_size = 8
    first, hit = cached_features(cat, idx, cfg, changed, embed, 2, str(tmp_path / "cache"))
    assert not hit and sum(calls) == 2 * len(cat) and first.shape == (2, len(cat), 5)
    plain = np.concatenate(list(eval_batches(cat, idx, cfg.data, cfg.eval.batch_size)))
    np.testing.assert_array_equal(first[0], plain.reshape(len(cat), -1)[:, :5])  # view 0: the plain images
    again, hit = cached_features(cat, idx, cfg, changed, embed, 2, str(tmp_path / "cache"))
    assert hit and sum(calls) == 2 * len(cat)
    np.testing.assert_array_equal(again, first)


def test_a_step_on_cached_features_is_the_frozen_backbone_step_on_the_images(tmp_path):
    cfg = _config()
    cfg.top.cache_dir = str(tmp_path)
    setup = build_setup(cfg)
    trainer, cat, split = setup.trainer, setup.catalogue, setup.split
    batch = next(trainer.batches(0, 1))
    chosen = pk_indices(cat.labels, split.train, 4, 4, 1, np.random.default_rng([cfg.seed, 7, 0]))[0]
    np.testing.assert_array_equal(batch["labels"], cat.labels[chosen])
    before = [np.array(p) for p in jax.tree.leaves(trainer.state.params)]  # the step donates the state
    topped, _ = trainer.train_step(trainer.state, shard_step_batch(batch, setup.mesh))

    # The reference: the whole network, every backbone stage frozen, on the same images.
    model = build_model(cfg.model, nnx.Rngs(cfg.seed), cfg.data.image_size)
    tx = optax.adam(cfg.optim.lr)
    frozen = tuple(stage_names(model))
    graphdef, _, state = init_train_state(model, tx, cfg.model.frozen_batchnorm, frozen)
    images = next(eval_batches(cat, chosen, cfg.data, len(chosen)))
    step = make_train_step(graphdef, tx, make_objective(cfg, cat.labels[split.train]).loss, setup.mesh,
                           image_normalizer(cfg.data, cfg.model.in_channels), frozen)
    whole, _ = step(jax.device_put(state, replicated(setup.mesh)),
                    shard_step_batch({"images": images, "labels": cat.labels[chosen].astype(np.int32)}, setup.mesh))
    for a, b in zip(jax.tree.leaves(topped.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(topped.params), before))  # it moved


@pytest.mark.parametrize("key, value, message", [
    ("model.embed_dim", 0, "top-tuning trains the head"),
    ("model.frozen_stages", ("conv1",), "top-tuning freezes the whole backbone"),
])
def test_bad_top_tune_settings_are_one_line(key, value, message):
    cfg = _config()
    section, leaf = key.split(".")
    cfg[section][leaf] = value
    with pytest.raises(UserError, match=message):
        check_config(cfg)
