import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.feature import hog

from configs import common
from navee_jax.data.sources import digits_catalogue
from navee_jax.evaluate.baselines import (BASELINES, features_for, hog_cell_size, hog_features, raw_pixel_features,
                                          to_gray)


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_gray_is_rgb2gray_with_709_weights():
    pure = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [51, 51, 51]]]], dtype=np.uint8)  # (1, 1, 4, 3)
    np.testing.assert_allclose(to_gray(pure)[0, 0], [0.2125, 0.7154, 0.0721, 0.2], atol=1e-12)
    images = _images()
    np.testing.assert_array_equal(to_gray(images), np.stack([rgb2gray(im) for im in images]))
    np.testing.assert_array_equal(to_gray(images[..., :1]), images[..., 0] / 255.0)


def test_hog_equals_skimage_hog_on_the_gray_images():
    images = _images(n=3, size=32)
    expected = np.stack([hog(rgb2gray(im), orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
                             block_norm="L2-Hys") for im in images]).astype(np.float32)
    got = hog_features(images)
    assert got.dtype == np.float32 and got.shape == (3, 7 * 7 * 2 * 2 * 9)
    np.testing.assert_array_equal(got, expected)
    # An explicit cell size is passed through: 8 px cells on 32 px images give 3x3 blocks.
    assert hog_features(images, pixels_per_cell=8).shape == (3, 3 * 3 * 36)


def test_hog_cell_size_scales_with_the_image():
    assert [hog_cell_size(s) for s in (8, 28, 32, 84, 224)] == [1, 3, 4, 10, 28]
    with pytest.raises(ValueError, match="2 cells"):
        hog_features(_images(n=1, size=12), pixels_per_cell=8)


def test_raw_pixels_are_the_images_flattened_over_255():
    images = _images(n=5, size=6)
    got = raw_pixel_features(images)
    assert got.dtype == np.float32 and got.shape == (5, 6 * 6 * 3)
    np.testing.assert_array_equal(got, images.reshape(5, -1).astype(np.float32) / 255)
    gray = raw_pixel_features(images, grayscale=True)
    np.testing.assert_array_equal(gray, np.stack([rgb2gray(im).ravel() for im in images]).astype(np.float32))


def test_features_for_returns_rows_in_index_order():
    catalogue = digits_catalogue()
    data = common.get_config("digits").data
    data.image_size = 8  # the digits' own size: eval_batches leaves the pixels untouched
    indices = np.random.default_rng(1).permutation(len(catalogue))[:37]
    got = features_for(indices, catalogue, data, raw_pixel_features, batch_size=8)  # last batch of 5
    expected = np.repeat(catalogue.pixels[indices], 3, axis=-1).reshape(37, -1).astype(np.float32) / 255
    np.testing.assert_array_equal(got, expected)
    hog_rows = features_for(indices, catalogue, data, BASELINES["HOG"], batch_size=16)
    np.testing.assert_array_equal(hog_rows, hog_features(np.repeat(catalogue.pixels[indices], 3, axis=-1)))
