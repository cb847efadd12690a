import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import triplet
from navee_jax.data.pipeline import train_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.models import build_model
from navee_jax.losses import make_objective
from navee_jax.sharding import make_mesh, replicated, shard_batch, shard_step_batch
from navee_jax.embed import image_normalizer, make_embed_fn
from navee_jax.train.step import init_train_state, make_train_step


def _model(cfg):
    return build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size)


@pytest.mark.parametrize("frozen", [False, True])
def test_batchnorm_statistics_update_unless_frozen(frozen):
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 4, 8, 16
    cat = digits_catalogue()
    batch = next(train_batches(cat, np.flatnonzero(cat.labels < 6), cfg, 0, 1))
    mesh, tx = make_mesh(), optax.adam(1e-2)
    graphdef, _, state = init_train_state(_model(cfg), tx, frozen_batchnorm=frozen)
    before = jax.device_get(state)
    step = make_train_step(graphdef, tx, make_objective(cfg, cat.labels).loss, mesh, image_normalizer(cfg.data))
    after, metrics = step(jax.device_put(state, replicated(mesh)), shard_step_batch(batch, mesh))
    after = jax.device_get(after)
    stats_moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.model_state),
                                                            jax.tree.leaves(after.model_state))]
    assert all(stats_moved) != frozen and (not frozen or not any(stats_moved))
    # BatchNorm's own scale and bias are parameters: they train either way.
    assert not np.array_equal(before.params["backbone"]["bn1"]["scale"], after.params["backbone"]["bn1"]["scale"])
    assert int(after.step) == 1 and np.isfinite(metrics["loss"])


def test_uint8_batches_are_normalised_inside_the_step_as_numpy_would():
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 4, 8, 16
    cat = digits_catalogue()
    images = next(train_batches(cat, np.flatnonzero(cat.labels < 6), cfg, 0, 1))["images"]
    mesh, tx = make_mesh(), optax.adam(1e-2)
    _, eval_graphdef, state = init_train_state(_model(cfg), tx)
    state = jax.device_put(state, replicated(mesh))
    on_device = make_embed_fn(eval_graphdef, mesh, image_normalizer(cfg.data))(state, shard_batch(images, mesh))
    on_host = (images.astype(np.float64) / 255 - np.array(cfg.data.mean)) / np.array(cfg.data.std)
    want = make_embed_fn(eval_graphdef, mesh)(state, shard_batch(on_host.astype(np.float32), mesh))
    assert images.dtype == np.uint8 and np.ptp(images) > 0
    np.testing.assert_allclose(on_device, want, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_or_gradient_stops_training_with_the_step():
    from navee_jax.errors import UserError
    from navee_jax.launcher.train import average_finite_metrics

    cfg = triplet.get_config("digits")
    ok = {"loss": np.float32(0.5), "grad_norm": np.float32(2.0)}
    assert average_finite_metrics([ok, {"loss": np.float32(1.5), "grad_norm": np.float32(4.0)}], 2, cfg) == \
        {"loss": 1.0, "grad_norm": 3.0}
    with pytest.raises(UserError, match="^loss not finite .* by step 7"):
        average_finite_metrics([ok, {"loss": np.float32("nan"), "grad_norm": np.float32(1.0)}], 7, cfg)
    with pytest.raises(UserError, match="^grad_norm not finite"):
        average_finite_metrics([{"loss": np.float32(0.2), "grad_norm": np.float32("inf")}], 1, cfg)


def test_embedding_spread_detects_collapse():
    from navee_jax.train.step import embedding_spread

    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(32, 16))
    collapsed = np.ones((32, 16)) + 1e-6 * rng.normal(size=(32, 16))
    centred = healthy - healthy.mean(0)
    want = np.linalg.norm(centred, axis=1).mean() / np.linalg.norm(healthy, axis=1).mean()
    assert float(embedding_spread(healthy)) == pytest.approx(want, rel=1e-5)
    assert float(embedding_spread(collapsed)) < 1e-5
