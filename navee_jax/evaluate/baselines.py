"""Non-network baselines: fixed feature extractors scored by the same retrieval / few-shot code as embeddings.

Each extractor maps a batch of uint8 images (N, S, S, C) (C = 3, or 1) to float32 features (N, D). They
need no training and see nothing of the base classes, so they tell how much of a learned embedding's score
is owed to learning at all: a trained network that does not beat HOG + 1-NN has not learnt much.

Grayscale conversion is skimage.color.rgb2gray (ITU-R 709 luma weights, which sum to 1), the function that
goes with skimage's HOG. On images already made gray by data.grayscale / data.binarize (three equal
channels) it returns that channel (to within 1e-15), so the choice of weights only matters for colour images.
"""

from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np
from skimage.color import rgb2gray
from skimage.feature import hog
from skimage.transform import resize

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.pipeline import eval_batches

Extractor = Callable[[np.ndarray], np.ndarray]

# HOG grid: about this many cells along each side of the image, whatever its size (see hog_cell_size).
HOG_CELLS_PER_SIDE = 8


def to_gray(images: np.ndarray) -> np.ndarray:
    """(N, S, S) float64 gray levels in [0, 1] from uint8 (N, S, S, 3) or (N, S, S, 1) images."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 1 or 3), got shape {images.shape}")
    if images.shape[-1] == 1:
        return images[..., 0].astype(np.float64) / 255.0
    return rgb2gray(images)


def raw_pixel_features(images: np.ndarray, grayscale: bool = False) -> np.ndarray:
    """Pixels flattened and scaled to [0, 1]: the floor any embedding must clear. `grayscale` keeps one
    value per pixel (to_gray), so colour alone cannot separate classes."""
    n = len(images)
    if grayscale:
        return to_gray(images).reshape(n, -1).astype(np.float32)
    return (np.asarray(images).reshape(n, -1).astype(np.float32) / np.float32(255.0))


def hog_cell_size(image_size: int, cells_per_side: int = HOG_CELLS_PER_SIDE) -> int:
    """Side of a HOG cell in pixels: image_size // cells_per_side (at least 1).

    Cells scale with the image rather than staying 8 px wide, because images reach this code already
    resized to data.image_size, which is a pipeline setting, not the photo's resolution (the 8x8 digits
    are upsampled to 32 px). A fixed grid describes every image at the same relative granularity and
    keeps the dimension fixed: 8x8 cells, 7x7 blocks of 2x2 cells, 9 orientations = 1,764 values when
    image_size is a multiple of 8, close to the study's 1,728 (60x80 photos at 8 px cells).
    """
    return max(1, image_size // cells_per_side)


def hog_features(images: np.ndarray, pixels_per_cell: int | None = None, orientations: int = 9) -> np.ndarray:
    """HOG of each image's gray levels (skimage.feature.hog: 2x2-cell blocks, L2-Hys block norm), the
    study's classical descriptor. `pixels_per_cell` defaults to hog_cell_size of the image's height."""
    gray = to_gray(images)
    cell = pixels_per_cell or hog_cell_size(gray.shape[1])
    if min(gray.shape[1:]) < 2 * cell:
        raise ValueError(f"HOG needs images of >= 2 cells ({2 * cell} px) per side; got {gray.shape[1:]}")
    return np.stack([hog(g, orientations=orientations, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                         block_norm="L2-Hys", feature_vector=True) for g in gray]).astype(np.float32)


# The study's HOG (section 4): photos of 60 x 80 pixels (width x height), gray; 8 orientations, 8-pixel cells,
# blocks of 2 x 2 cells: 9 x 6 blocks x 4 cells x 8 orientations = the 1,728 values the study names.
STUDY_HOG_SHAPE = (80, 60)  # rows, columns


def study_hog_features(images: np.ndarray) -> np.ndarray:
    """The study's HOG descriptor (1,728 values) of each image, resized (anti-aliased) to 60 x 80 pixels."""
    gray = to_gray(images)
    return np.stack([hog(resize(g, STUDY_HOG_SHAPE, anti_aliasing=True), orientations=8, pixels_per_cell=(8, 8),
                         cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True)
                     for g in gray]).astype(np.float32)


# The baselines launch.py evaluates next to the learned embedding, by the name its report shows.
BASELINES: dict[str, Extractor] = {"HOG": hog_features, "raw pixels": raw_pixel_features}


def features_for(indices: np.ndarray, catalogue: Catalogue, data_cfg: ml_collections.ConfigDict,
                 extractor: Extractor, batch_size: int) -> np.ndarray:
    """(len(indices), D) float32 features of the un-augmented images of `indices`, rows in index order.

    Images come from the same eval_batches as the network sees (same resize, same gray / binarize), so
    a baseline and an embedding are scored on identical pixels; batching bounds memory on large sets.
    """
    parts = [np.asarray(extractor(images), dtype=np.float32)
             for images in eval_batches(catalogue, np.asarray(indices), data_cfg, batch_size)]
    if not parts:
        raise ValueError("features_for: no indices given")
    return np.concatenate(parts)
