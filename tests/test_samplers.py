"""Pair (p_same) and triplet samplers, checked against brute-force counts over the labels."""

import numpy as np
import pytest

from configs import common
from navee_jax.data.pipeline import pair_indices, triplet_indices, tuple_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.errors import UserError

# class sizes 6, 4, 3, 1 (a one-image class can only be a negative), in a shuffled pool
LABELS = np.repeat(np.arange(4), [6, 4, 3, 1])
POOL = np.random.default_rng(7).permutation(len(LABELS))


def test_pairs_are_positive_with_probability_p_same_and_well_formed():
    for p_same in (0.0, 0.3, 1.0):
        out = pair_indices(LABELS, POOL, 64, p_same, 50, np.random.default_rng(0))
        pairs, same = out["pairs"], out["same"]
        assert pairs.shape == (50, 64, 2) and same.shape == (50, 64)
        a, b = LABELS[pairs[..., 0]], LABELS[pairs[..., 1]]
        np.testing.assert_array_equal(same, a == b)  # the flag is the truth about the labels
        assert np.all(pairs[..., 0] != pairs[..., 1])  # a positive pair is two distinct images
        assert not np.any(np.isin(pairs[same], [13]))  # the one-image class forms no positive pair
        n = same.size  # the positive fraction is Binomial(n, p_same): within 5 standard deviations
        assert abs(same.mean() - p_same) <= 5 * np.sqrt(p_same * (1 - p_same) / n) + 1e-12


def test_negative_partners_are_uniform_over_the_other_classes_images():
    out = pair_indices(LABELS, POOL, 1000, 0.0, 40, np.random.default_rng(1))
    first, second = out["pairs"][..., 0].ravel(), out["pairs"][..., 1].ravel()
    from_class0 = second[LABELS[first] == 0]
    counts = np.bincount(from_class0, minlength=len(LABELS))
    others = np.flatnonzero(LABELS != 0)
    assert counts[LABELS == 0].sum() == 0
    expected = len(from_class0) / len(others)  # 8 other images, each equally likely
    chi2 = ((counts[others] - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # chi-square with 7 degrees of freedom, p = 0.001


def test_triplets_have_an_anchor_positive_and_negative():
    t = triplet_indices(LABELS, POOL, 32, 20, np.random.default_rng(2))
    assert t.shape == (20, 32, 3)
    a, p, n = (LABELS[t[..., i]] for i in range(3))
    assert np.all(a == p) and np.all(a != n) and np.all(t[..., 0] != t[..., 1])
    assert not np.any(t[..., :2] == 13)  # the one-image class is never an anchor or positive
    assert np.isin(13, t[..., 2])  # ... but can be a negative
    np.testing.assert_array_equal(t, triplet_indices(LABELS, POOL, 32, 20, np.random.default_rng(2)))
    assert not np.array_equal(t, triplet_indices(LABELS, POOL, 32, 20, np.random.default_rng(3)))


def test_samplers_refuse_pools_that_cannot_form_tuples():
    with pytest.raises(UserError, match="at least 2 training classes"):
        triplet_indices(LABELS, np.flatnonzero(LABELS == 0), 4, 1, np.random.default_rng(0))
    with pytest.raises(UserError, match=">= 2 images"):
        pair_indices(np.arange(5), np.arange(5), 4, 0.5, 1, np.random.default_rng(0))
    with pytest.raises(UserError, match="sampler.p_same=1.5"):
        pair_indices(LABELS, POOL, 4, 1.5, 1, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["pairs", "triplets"])
def test_tuple_batches_hold_the_sampled_images_and_split_between_processes(kind):
    cfg = common.get_config()
    cfg.data.image_size, cfg.data.flip = 8, False  # source size, no flips: images are the pixels themselves
    cfg.sampler.tuples_per_batch = 6
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    whole = list(tuple_batches(cat, pool, cfg, epoch=1, num_batches=2, kind=kind))
    width = 2 if kind == "pairs" else 3
    rng = np.random.default_rng([cfg.seed, 5 if kind == "pairs" else 6, 1])
    drawn = (pair_indices(cat.labels, pool, 6, cfg.sampler.p_same, 2, rng)["pairs"] if kind == "pairs"
             else triplet_indices(cat.labels, pool, 6, 2, rng))
    for b, batch in enumerate(whole):
        assert batch["images"].shape == (6, width, 8, 8, 3) and batch["images"].dtype == np.uint8
        np.testing.assert_array_equal(batch["images"], np.repeat(cat.pixels[drawn[b]], 3, axis=-1))
        np.testing.assert_array_equal(batch["labels"], cat.labels[drawn[b]])
        if kind == "pairs":
            np.testing.assert_array_equal(batch["same"], batch["labels"][:, 0] == batch["labels"][:, 1])
    cfg.data.flip = True  # with augmentation, two processes' shares still make up the global batch
    whole = list(tuple_batches(cat, pool, cfg, epoch=1, num_batches=2, kind=kind))
    shares = [list(tuple_batches(cat, pool, cfg, 1, 2, kind, process_index=p, process_count=2)) for p in range(2)]
    for b in range(2):
        for key in whole[b]:
            np.testing.assert_array_equal(np.concatenate([shares[0][b][key], shares[1][b][key]]), whole[b][key])
