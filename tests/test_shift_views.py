"""Test-time shift averaging (model.tta_shift_px): the views against NumPy shifts, the embedding against the mean
of plain embeddings of shifted copies, in the trainer's embedding and the Recognizer."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import triplet
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.embed import ShiftViews, image_normalizer, make_embed_fn
from navee_jax.models import build_model
from navee_jax.recognize.api import Recognizer
from navee_jax.sharding import make_mesh, replicated, shard_batch
from navee_jax.train.step import init_train_state

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def numpy_shift(images: np.ndarray, dy: int, dx: int, fill: int) -> np.ndarray:
    """Content moved down by dy and right by dx; uncovered pixels `fill`."""
    out = np.full_like(images, fill)
    h, w = images.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _config(px: int):
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 4, 8, 16
    cfg.model.tta_shift_px = px
    return cfg


def _images(cfg, n=12):
    cat = digits_catalogue()
    return next(eval_batches(cat, np.arange(n), cfg.data, n))


@pytest.mark.parametrize("px", [1, 3])
def test_views_are_numpy_shifts_view_major(px):
    images = np.random.default_rng(0).integers(0, 255, (2, 7, 9, 3), dtype=np.uint8)
    views = np.asarray(ShiftViews(px, 200, True).views(images))
    want = [numpy_shift(images, dy, dx, 200) for dy in (-px, 0, px) for dx in (-px, 0, px)]
    np.testing.assert_array_equal(views, np.concatenate(want))
    np.testing.assert_array_equal(views[8:10], images)  # the unshifted view is the 5th


@pytest.mark.parametrize("normalize", [True, False])
def test_embedding_is_the_mean_over_shifted_copies(normalize):
    cfg = _config(1)
    cfg.model.normalize = normalize
    images = _images(cfg)
    mesh = make_mesh()
    _, eval_graphdef, state = init_train_state(build_model(cfg.model, nnx.Rngs(0), 16), optax.adam(1e-3))
    state = jax.device_put(state, replicated(mesh))
    prepare = image_normalizer(cfg.data)
    shifts = ShiftViews.from_config(cfg)
    assert shifts == ShiftViews(1, round(255 * cfg.data.fill), normalize)
    got = np.asarray(make_embed_fn(eval_graphdef, mesh, prepare, shifts=shifts)(state, shard_batch(images, mesh)))
    plain = make_embed_fn(eval_graphdef, mesh, prepare)
    views = [np.asarray(plain(state, shard_batch(numpy_shift(images, dy, dx, shifts.fill), mesh)), np.float64)
             for dy, dx in OFFSETS]
    want = np.mean(views, axis=0)
    if normalize:
        want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, views[4], atol=1e-3)  # the shifts change the embedding


def test_recognizer_averages_shifts_and_records_them():
    cfg = _config(1)
    images = _images(cfg)
    model = build_model(cfg.model, nnx.Rngs(0), 16)
    rec = Recognizer(cfg, model, "test")
    off = _config(0)
    plain = Recognizer(off, build_model(off.model, nnx.Rngs(0), 16), "test")
    views = np.stack([plain.embed(numpy_shift(images, dy, dx, round(255 * cfg.data.fill))) for dy, dx in OFFSETS])
    want = views.mean(0) / np.linalg.norm(views.mean(0), axis=1, keepdims=True)
    np.testing.assert_allclose(rec.embed(images), want, rtol=1e-4, atol=1e-5)
    assert rec.fingerprint["model"]["tta_shift_px"] == 1 and "tta_shift_px" not in plain.fingerprint["model"]


def test_exported_embedding_keeps_the_shift_averaging(tmp_path):
    from navee_jax.data.tf_import import tf_module
    from navee_jax.recognize.export import SAVED_MODEL_NAME, STABLEHLO_NAME, export_embedding, load_stablehlo

    cfg = _config(1)
    images = _images(cfg, n=5)  # another batch size than the recognizer's: the batch is symbolic
    rec = Recognizer(cfg, build_model(cfg.model, nnx.Rngs(0), 16), "test")
    export_embedding(rec, str(tmp_path))
    want = rec.embed(images)
    stablehlo = np.asarray(load_stablehlo(str(tmp_path / STABLEHLO_NAME))(images))
    saved = tf_module().saved_model.load(str(tmp_path / SAVED_MODEL_NAME))
    tf_out = saved.signatures["serving_default"](images=tf_module().constant(images))["embeddings"].numpy()
    assert np.abs(stablehlo - want).max() <= 1e-5 and np.abs(tf_out - want).max() <= 1e-5
