"""Koch et al.'s affine distortion (data.affine): against PIL's affine transform, its seeding and draws,
and through the real training pipeline."""

import json
import math

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from navee_jax.data import augment
from navee_jax.data.pipeline import train_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.data.tf_import import tf_module
from navee_jax.recorded_config import complete

IDENTITY = (0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
PARAMS = {  # (theta rad, rho_x, rho_y, s_x, s_y, t_x px, t_y px)
    "rotation": (0.15, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0),
    "shear": (0.0, 0.3, -0.2, 1.0, 1.0, 0.0, 0.0),
    "anisotropic scale": (0.0, 0.0, 0.0, 0.8, 1.2, 0.0, 0.0),
    "translation": (0.0, 0.0, 0.0, 1.0, 1.0, 1.7, -2.0),
    "all together": (-0.17, -0.25, 0.3, 1.15, 0.85, -1.3, 1.9),
}


def _pil_inverse(params, w, h):
    """PIL's AFFINE data: the output -> input map, built independently as a 3x3 product of the forward
    steps in PIL's continuous coordinates (pixel i covers [i, i + 1), so the centre is (w / 2, h / 2)),
    then inverted numerically."""
    th, rx, ry, sx, sy, tx, ty = params

    def shift(dx, dy):
        return np.array([[1.0, 0, dx], [0, 1, dy], [0, 0, 1]])

    rot = np.array([[math.cos(th), math.sin(th), 0], [-math.sin(th), math.cos(th), 0], [0, 0, 1]])  # y down: CCW
    shear = np.array([[1.0, rx, 0], [ry, 1, 0], [0, 0, 1]])
    forward = shift(w / 2 + tx, h / 2 + ty) @ rot @ shear @ np.diag([sx, sy, 1.0]) @ shift(-w / 2, -h / 2)
    return np.linalg.inv(forward)


def _interior(inv, w, h, margin=1.5):
    """Output pixels whose sample point lies `margin` pixels inside the input: all 4 bilinear neighbours
    are real pixels, where TF (which blends edge pixels with the fill) and PIL must agree."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    xi, yi = (inv[r, 0] * xs + inv[r, 1] * ys + inv[r, 2] for r in (0, 1))
    return (xi >= margin) & (xi <= w - margin) & (yi >= margin) & (yi <= h - margin)


def _gray_image():
    """105x105 in [0, 1]: noise over a vertical ramp, so misplaced samples show."""
    noise = np.random.default_rng(0).random((105, 105))
    return np.clip(0.3 * noise + np.linspace(0, 0.7, 105)[:, None], 0, 1).astype(np.float32)


def _gray_reference(img, params, fill):
    inv = _pil_inverse(params, img.shape[1], img.shape[0])
    out = Image.fromarray(img, mode="F").transform((img.shape[1], img.shape[0]), Image.AFFINE,
                                                   data=tuple(inv[:2].ravel()), resample=Image.BILINEAR,
                                                   fillcolor=fill)
    return np.asarray(out), inv


# Tolerances. Grayscale (PIL in 32-bit float): interior max 1e-4 (float32 coordinate rounding; measured
# <= 3.6e-6); whole-image mean 0.01 (only the 1-pixel band at the edges differs, where TF blends with the
# fill and PIL does not; measured <= 3.8e-3). RGB (PIL in 8 bits): interior max 1.5/255 (PIL's output is
# quantised to 1/255; measured <= 1.0/255).
@pytest.mark.parametrize("name", PARAMS)
def test_gray_matches_pil(name):
    img = _gray_image()
    got = augment.affine(np.repeat(img[..., None], 3, axis=-1), np.float32(PARAMS[name]), 0.9).numpy()
    assert np.allclose(got[..., 0], got[..., 2])
    want, inv = _gray_reference(img, PARAMS[name], 0.9)
    inside = _interior(inv, 105, 105)
    diff = np.abs(got[..., 0] - want)
    assert inside.mean() > 0.7
    assert diff[inside].max() < 1e-4 and diff.mean() < 0.01
    if name == "rotation":  # the check tells directions apart: the opposite rotation is far off
        opposite, _ = _gray_reference(img, (-0.15, *IDENTITY[1:]), 0.9)
        assert np.abs(got[..., 0] - opposite)[inside].max() > 0.1


@pytest.mark.parametrize("name", PARAMS)
def test_rgb_non_square_matches_pil(name):
    rgb = np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    got = augment.affine(rgb.astype(np.float32) / 255, np.float32(PARAMS[name]), 1.0).numpy()
    inv = _pil_inverse(PARAMS[name], 13, 9)
    want = Image.fromarray(rgb).transform((13, 9), Image.AFFINE, data=tuple(inv[:2].ravel()),
                                          resample=Image.BILINEAR, fillcolor=(255, 255, 255))
    inside = _interior(inv, 13, 9)
    assert inside.sum() >= 40
    assert np.abs(got - np.asarray(want, np.float32) / 255)[inside].max() <= 1.5 / 255


def test_identity_gives_the_image_back():
    img = np.random.default_rng(1).random((17, 17, 3)).astype(np.float32)
    np.testing.assert_array_equal(augment.affine(img, np.float32(IDENTITY), 1.0).numpy(), img)


def test_fill_outside_the_image():
    shrunk = augment.affine(np.zeros((21, 21, 3), np.float32), np.float32((0, 0, 0, 0.5, 0.5, 0, 0)), 0.25).numpy()
    assert np.all(shrunk[0, 0] == 0.25) and np.all(shrunk[10, 10] == 0.0)


def _draws(seeds, size):
    tf = tf_module()
    fn = tf.function(lambda s: tf.map_fn(lambda x: augment.random_affine_params(x, size), s,
                                         fn_output_signature=tf.float32))
    return fn(tf.constant(seeds, tf.int64)).numpy()


def test_draws_are_in_koch_ranges_each_half_the_time():
    n = 2000
    p = _draws(np.stack([np.arange(n), np.full(n, 7)], axis=1), 105)
    active = p != np.float32(IDENTITY)
    # Each component is on with probability 0.5: a 2000-draw frequency has sd 0.011; 0.05 is 4.5 sd.
    np.testing.assert_allclose(active.mean(axis=0), 0.5, atol=0.05)
    assert len({tuple(a) for a in active}) > 64  # components switch on independently, not together
    limits = [math.radians(10), 0.3, 0.3, None, None, 2.0, 2.0]
    for k, limit in enumerate(limits):
        on = p[active[:, k], k]
        if limit is None:  # scales
            assert on.min() >= 0.8 and on.max() <= 1.2 and on.min() < 0.82 and on.max() > 1.18
        else:
            assert np.abs(on).max() <= limit * (1 + 1e-6) and on.min() < -0.9 * limit and on.max() > 0.9 * limit
    # The translation is Koch's 2 px at 105 scaled to the image size; the other draws do not depend on it.
    small = _draws(np.stack([np.arange(50), np.full(50, 7)], axis=1), 28)
    np.testing.assert_allclose(small[:, :5], p[:50, :5])
    np.testing.assert_allclose(small[:, 5:], p[:50, 5:] * 28 / 105, rtol=1e-5)


def test_seeded_through_geometry_and_colour():
    tf = tf_module()
    data = common.get_config("digits").data
    data.flip, data.affine = False, True
    img = np.random.default_rng(2).random((16, 16, 3)).astype(np.float32)
    a = augment.geometry_and_colour(img, tf.constant([3, 4], tf.int64), data).numpy()
    b = augment.geometry_and_colour(img, tf.constant([3, 4], tf.int64), data).numpy()
    np.testing.assert_array_equal(a, b)
    others = [augment.geometry_and_colour(img, tf.constant([s, 9], tf.int64), data).numpy() for s in range(6)]
    assert sum(not np.allclose(a, o) for o in others) >= 5
    assert a.min() >= 0 and a.max() <= 1 + 1e-6
    want = augment.affine(img, augment.random_affine_params(tf.constant([3, 4], tf.int64), 16), data.fill)
    np.testing.assert_array_equal(a, want.numpy())


def test_pipeline_on_distorts_off_is_unchanged():
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    cfg = common.get_config("digits")
    cfg.data.image_size = 24
    assert cfg.data.affine is False  # off by default
    off = list(train_batches(cat, pool, cfg, epoch=1, num_batches=2))
    recorded = json.loads(cfg.to_json())
    del recorded["data"]["affine"]  # a workdir's config.json from before the key existed
    absent = ml_collections.ConfigDict(complete(recorded))
    for x, y in zip(off, train_batches(cat, pool, absent, epoch=1, num_batches=2)):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    cfg.data.affine = True
    on = list(train_batches(cat, pool, cfg, epoch=1, num_batches=2))
    again = list(train_batches(cat, pool, cfg, epoch=1, num_batches=2))
    for x, y, z in zip(off, on, again):
        np.testing.assert_array_equal(x["labels"], y["labels"])
        np.testing.assert_array_equal(y["images"], z["images"])
        assert y["images"].dtype == np.uint8 and y["images"].shape == x["images"].shape
        changed = [not np.array_equal(a, b) for a, b in zip(x["images"], y["images"])]
        assert np.mean(changed) > 0.9  # all 7 components stay off for only 1 image in 128
