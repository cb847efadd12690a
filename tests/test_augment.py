"""Augmentations against independent references (NumPy / PIL), and their seeding."""

import math

import numpy as np
import pytest
from PIL import Image

from configs import common
from navee_jax.data import augment
from navee_jax.data.tf_import import tf_module


def _image(h=9, w=9, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_rotation_by_quarter_turns_matches_numpy():
    img = _image()
    for k in (1, 2, 3):
        got = augment.rotate(img, np.float32(k * math.pi / 2), fill=1.0).numpy()
        np.testing.assert_allclose(got, np.rot90(img, k=k, axes=(0, 1)), atol=1e-5)


def test_rotation_fills_uncovered_corners():
    got = augment.rotate(np.zeros((21, 21, 3), np.float32), np.float32(math.pi / 4), fill=1.0).numpy()
    assert np.all(got[0, 0] == 1.0) and np.all(got[10, 10] == 0.0)


def test_pad_resize_keeps_aspect_and_pads_white():
    img = np.zeros((4, 8, 3), np.float32)  # a black 2:1 image
    got = augment.resize(img, 8, "pad", fill=1.0).numpy()
    assert np.all(got[:2] == 1.0) and np.all(got[-2:] == 1.0) and np.allclose(got[2:6], 0.0)
    squashed = augment.resize(img, 8, "squash", fill=1.0).numpy()
    assert np.allclose(squashed, 0.0)


def test_grayscale_and_binarize_match_pil_luminance():
    rgb = (np.random.default_rng(1).random((6, 7, 3)) * 255).round().astype(np.uint8)
    want = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    got = augment.to_grayscale(rgb.astype(np.float32) / 255, binarize=False).numpy()
    assert got.shape == (6, 7, 3) and np.allclose(got[..., 0], got[..., 2])
    np.testing.assert_allclose(got[..., 0], want, atol=1 / 255 + 1e-6)
    binary = augment.to_grayscale(rgb.astype(np.float32) / 255, binarize=True).numpy()[..., 0]
    confident = np.abs(want - 0.5) > 2 / 255
    np.testing.assert_array_equal(binary[confident], (want >= 0.5)[confident])


def test_random_resized_crop_at_full_scale_is_a_plain_resize():
    tf = tf_module()
    img = _image(12, 12)
    got = augment.random_resized_crop(img, tf.constant([1, 2], tf.int64), 6, scale_min=1.0).numpy()
    np.testing.assert_allclose(got, augment.resize(img, 6, "squash", 1.0).numpy(), atol=1e-6)
    crops = [augment.random_resized_crop(img, tf.constant([s, 0], tf.int64), 6, 0.3).numpy() for s in range(4)]
    assert all(c.shape == (6, 6, 3) for c in crops) and not np.allclose(crops[0], crops[1])


@pytest.mark.parametrize("key, value", [("rotation_deg", 20.0), ("color_jitter", 0.3), ("flip", True)])
def test_random_transforms_are_seeded(key, value):
    tf = tf_module()
    data = common.get_config("digits").data
    data.flip = False
    data[key] = value
    img = _image(8, 8)
    a = augment.geometry_and_colour(img, tf.constant([3, 4], tf.int64), data).numpy()
    b = augment.geometry_and_colour(img, tf.constant([3, 4], tf.int64), data).numpy()
    others = [augment.geometry_and_colour(img, tf.constant([s, 9], tf.int64), data).numpy() for s in range(6)]
    np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, o) for o in others)
    assert a.min() >= 0 and a.max() <= 1 + 1e-6


def test_random_shift_matches_scipy_and_adds_to_kochs_translation_in_one_resampling():
    from scipy import ndimage

    tf = tf_module()
    img = _image(11, 11)
    shifts = []
    for s in range(8):
        seed = tf.constant([s, 5], tf.int64)
        t_x, t_y = augment.random_shift(seed, 2.0).numpy()
        got = augment.random_geometry(img, seed, koch=False, shift_px=2.0, fill=0.7).numpy()
        # scipy shifts content by +t along each axis, the same direction as the affine map's translation.
        want = ndimage.shift(img, (t_y, t_x, 0), order=1, mode="constant", cval=0.7)
        inner = np.s_[3:-3, 3:-3]  # bilinear edges blend with the fill differently; the interior must agree
        np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)
        shifts.append((t_x, t_y))
    shifts = np.array(shifts)
    assert np.all(np.abs(shifts) <= 2.0) and shifts.std() > 0.5
    seed = tf.constant([0, 5], tf.int64)
    np.testing.assert_array_equal(augment.random_shift(seed, 2.0).numpy(), shifts[0])
    # With Koch's distortion on, its own draw is unchanged and the shift adds to its translation.
    koch = augment.random_affine_params(seed, 11).numpy()
    both = augment.affine(img, koch + np.r_[np.zeros(5), shifts[0]].astype(np.float32), 0.7).numpy()
    np.testing.assert_allclose(augment.random_geometry(img, seed, koch=True, shift_px=2.0, fill=0.7).numpy(), both,
                               atol=1e-6)
    data = common.get_config("digits").data
    data.flip, data.translate_px = False, 2.0
    np.testing.assert_allclose(augment.geometry_and_colour(img, seed, data).numpy(),
                               augment.random_geometry(img, seed, False, 2.0, data.fill).numpy())
