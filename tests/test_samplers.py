"""The per-class table and the samplers built on it: pairs (p_same) and triplets checked against brute-force
counts over the labels; N-way K-shot episodes (training: one pool; evaluation: support and query pools)
against per-episode brute-force references and fixed draws."""

import numpy as np
import pytest

from configs import common
from navee_jax.data.episodes import ClassTable, EpisodeSampler
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
    cfg = common.get_config("digits")
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


def test_class_table_groups_the_pool_by_class_in_pool_order():
    labels = np.array([5, 2, 5, 9, 2, 2, 7, 5])
    pool = np.array([7, 0, 4, 3, 2, 1])  # image 5 and 6 are not in the pool
    table = ClassTable(labels, pool)
    np.testing.assert_array_equal(table.classes, [2, 5, 9])
    for r, c in enumerate(table.classes):
        np.testing.assert_array_equal(table.members(r), pool[labels[pool] == c])  # pool order kept
        np.testing.assert_array_equal(table.row[table.start[r]:table.start[r] + table.count[r]], r)
    padded, counts = table.padded(np.array([9, 3, 5, 2]))  # 3 is not in the pool
    np.testing.assert_array_equal(counts, [1, 0, 3, 2])
    np.testing.assert_array_equal(padded, [[3, 0, 0], [0, 0, 0], [7, 0, 2], [4, 1, 0]])
    empty, counts = ClassTable(labels[:0]).padded(np.array([1, 2]))
    assert empty.shape == (2, 1) and not empty.any() and not counts.any()


# Evaluation pools: class 2 has no query image, class 4 a single support image; labels not contiguous.
S_LAB = np.array([3, 0, 1, 0, 3, 2, 4, 3, 0, 1, 2, 3, 0, 2, 3])
Q_LAB = np.array([1, 0, 3, 4, 0, 4, 3, 0, 4, 4])


def test_two_pool_episodes_are_the_draws_evaluation_has_always_made():
    """Fixed draws of the sampler evaluation used before the training and evaluation samplers were merged
    (`EpisodePool`): every reported few-shot number depends on them staying identical."""
    eps = EpisodeSampler(S_LAB, Q_LAB).sample(3, 1, 3, 4, np.random.default_rng([5, 3, 1]))
    np.testing.assert_array_equal(eps.classes, [[3, 4, 1], [3, 0, 1], [0, 1, 4], [3, 4, 0]])
    np.testing.assert_array_equal(eps.support, [[7, 6, 9], [4, 1, 9], [1, 2, 6], [7, 6, 1]])
    np.testing.assert_array_equal(eps.query, [[2, 6, 0, 3, 9, 5, 0, 0, 0], [2, 6, 0, 7, 4, 1, 0, 0, 0],
                                              [7, 4, 1, 0, 0, 0, 5, 3, 8], [2, 6, 0, 5, 3, 9, 1, 7, 4]])
    np.testing.assert_array_equal(eps.query_mask, np.array([[1, 1, 0, 1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1, 1, 0, 0],
                                                            [1, 1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 1, 1, 1, 1]],
                                                           bool))
    np.testing.assert_array_equal(eps.support_labels, np.tile([0, 1, 2], (4, 1)))
    np.testing.assert_array_equal(eps.query_labels, np.tile(np.repeat([0, 1, 2], 3), (4, 1)))
    assert eps.filled.shape == (4, 3) and not eps.filled.any()
    eps = EpisodeSampler(S_LAB, Q_LAB).sample(2, 2, 2, 3, np.random.default_rng([1, 2, 2]), min_queries=2)
    np.testing.assert_array_equal(eps.classes, [[3, 0], [3, 0], [0, 3]])
    np.testing.assert_array_equal(eps.support, [[11, 7, 12, 1], [14, 4, 12, 1], [12, 1, 11, 7]])
    np.testing.assert_array_equal(eps.query, [[2, 6, 4, 1], [2, 6, 7, 1], [1, 4, 2, 6]])
    with pytest.raises(ValueError, match="4-way 2-shot needs 4 classes with >= 2 support and >= 1 query images; "
                                         "3 classes qualify"):
        EpisodeSampler(S_LAB, Q_LAB).sample(4, 2, 2, 1, np.random.default_rng(0))


def two_pool_reference(s_lab, q_lab, ways, shots, queries, num_episodes, rng, min_queries=1):
    """The documented two-pool draw, one episode and class at a time: classes ranked by uniform keys, each
    class's images by uniform keys (one per column of a table as wide as the largest eligible class)."""
    classes = np.unique(s_lab)
    s_members = [np.flatnonzero(s_lab == c) for c in classes]
    q_members = [np.flatnonzero(q_lab == c) for c in classes]
    eligible = [i for i in range(len(classes)) if len(s_members[i]) >= shots and len(q_members[i]) >= min_queries]
    s_width = max(len(s_members[i]) for i in eligible)
    q_width = max(len(q_members[i]) for i in eligible)
    q = min(queries, q_width)
    class_keys = rng.random((num_episodes, len(eligible)))
    support_keys = rng.random((num_episodes, ways, s_width))
    query_keys = rng.random((num_episodes, ways, q_width))
    out = {"classes": [], "support": [], "query": [], "mask": []}
    for e in range(num_episodes):
        chosen = [eligible[i] for i in sorted(range(len(eligible)), key=lambda i: class_keys[e, i])[:ways]]
        out["classes"].append(classes[chosen])
        support, query, mask = [], [], []
        for j, c in enumerate(chosen):
            s_order = sorted(range(len(s_members[c])), key=lambda i: support_keys[e, j, i])
            support += list(s_members[c][s_order[:shots]])
            q_order = sorted(range(len(q_members[c])), key=lambda i: query_keys[e, j, i])[:q]
            query += list(q_members[c][q_order]) + [0] * (q - len(q_order))
            mask += [True] * len(q_order) + [False] * (q - len(q_order))
        out["support"].append(support)
        out["query"].append(query)
        out["mask"].append(mask)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("ways, shots, queries, min_queries", [(2, 1, 1, 1), (3, 2, 4, 1), (4, 3, 15, 2)])
def test_two_pool_episodes_equal_a_per_episode_reference(ways, shots, queries, min_queries):
    g = np.random.default_rng(ways)
    s_lab, q_lab = g.integers(0, 7, 60) * 3, g.integers(0, 7, 25) * 3  # some classes short of queries
    eps = EpisodeSampler(s_lab, q_lab).sample(ways, shots, queries, 40, np.random.default_rng([1, ways, shots]),
                                              min_queries)
    ref = two_pool_reference(s_lab, q_lab, ways, shots, queries, 40, np.random.default_rng([1, ways, shots]),
                             min_queries)
    np.testing.assert_array_equal(eps.classes, ref["classes"])
    np.testing.assert_array_equal(eps.support, ref["support"])
    np.testing.assert_array_equal(eps.query, ref["query"])
    np.testing.assert_array_equal(eps.query_mask, ref["mask"])
    assert queries == 1 or not ref["mask"].all()  # padding was exercised


def one_pool_reference(labels, ways, shots, queries, num_episodes, rng):
    """The documented one-pool draw, one episode and class at a time: the classes are the first N of a random
    ranking of the eligible ones, each class's images are ranked by i.i.d. uniform keys (the first Q queries,
    the next K support), then copies fill the support slots a short class cannot (same rng calls in order)."""
    classes, counts = np.unique(labels, return_counts=True)
    members = [np.flatnonzero(labels == c) for c in classes]
    eligible = np.flatnonzero(counts > queries)
    chosen = eligible[np.argsort(rng.random((num_episodes, len(eligible))), axis=1)[:, :ways]]
    keys = rng.random((num_episodes, ways, counts[eligible].max()))
    rest = counts[chosen] - queries
    copies = rng.integers(0, rest[..., None], size=(num_episodes, ways, shots))
    support, query = [], []
    for e in range(num_episodes):
        s, q = [], []
        for j, c in enumerate(chosen[e]):
            own = members[c][np.argsort(keys[e, j, :counts[c]])]
            q += list(own[:queries])
            s += [own[queries + (i if i < rest[e, j] else copies[e, j, i])] for i in range(shots)]
        support.append(s)
        query.append(q)
    return classes[chosen], np.array(support), np.array(query), np.maximum(shots - rest, 0)


# Training pool: class sizes 3, 9, 4, 12, 2, 7 with labels 10..15, shuffled
TRAIN_LABELS = np.random.default_rng(3).permutation(np.repeat(np.arange(10, 16), [3, 9, 4, 12, 2, 7]))


@pytest.mark.parametrize("ways, shots, queries", [(4, 5, 2), (5, 1, 1), (2, 3, 6), (3, 9, 0)])
def test_one_pool_episodes_are_disjoint_and_fill_short_classes_from_their_own_images(ways, shots, queries):
    sampler = EpisodeSampler(TRAIN_LABELS)
    eps = sampler.sample(ways, shots, queries, 60, np.random.default_rng(0))
    counts = dict(zip(*np.unique(TRAIN_LABELS, return_counts=True)))
    assert eps.support.shape == (60, ways * shots) and eps.query.shape == (60, ways * queries)
    assert eps.query_mask.all() and eps.filled.shape == (60, ways)
    np.testing.assert_array_equal(eps.support_labels, np.tile(np.repeat(np.arange(ways), shots), (60, 1)))
    np.testing.assert_array_equal(eps.query_labels, np.tile(np.repeat(np.arange(ways), queries), (60, 1)))
    for e in range(60):
        assert len(set(eps.classes[e])) == ways and all(counts[c] > queries for c in eps.classes[e])
        np.testing.assert_array_equal(TRAIN_LABELS[eps.support[e]], eps.classes[e][eps.support_labels[e]])
        np.testing.assert_array_equal(TRAIN_LABELS[eps.query[e]], eps.classes[e][eps.query_labels[e]])
        assert len(set(eps.query[e])) == ways * queries  # distinct queries ...
        assert not set(eps.support[e]) & set(eps.query[e])  # ... none of them a support image
        for j, c in enumerate(eps.classes[e]):
            own = eps.support[e][j * shots:(j + 1) * shots]
            left = counts[c] - queries  # images of the class that are not queries
            assert len(set(own)) == min(shots, left)  # every one of them used before any copy
            assert eps.filled[e, j] == max(0, shots - left) == shots - len(set(own))
    if (ways, shots, queries) == (4, 5, 2):
        assert eps.filled.any() and not eps.filled.all()  # both cases occurred
    classes, support, query, filled = one_pool_reference(TRAIN_LABELS, ways, shots, queries, 60,
                                                         np.random.default_rng(0))
    np.testing.assert_array_equal(eps.classes, classes)
    np.testing.assert_array_equal(eps.support, support)
    np.testing.assert_array_equal(eps.query, query)
    np.testing.assert_array_equal(eps.filled, filled)
    again = sampler.sample(ways, shots, queries, 60, np.random.default_rng(0))
    other = sampler.sample(ways, shots, queries, 60, np.random.default_rng(1))
    for key in ("classes", "support", "query", "filled"):
        np.testing.assert_array_equal(getattr(eps, key), getattr(again, key))
    assert not np.array_equal(eps.support, other.support)


def test_one_pool_draws_are_uniform():
    # One class of 6 images, 1 query and 2 support images: each of the 6*5*4 ordered triples is equally likely.
    eps = EpisodeSampler(np.zeros(6, int)).sample(1, 2, 1, 12000, np.random.default_rng(0))
    triple = (eps.query[:, 0] * 6 + eps.support[:, 0]) * 6 + eps.support[:, 1]
    counts = np.bincount(triple, minlength=216)
    seen = counts[counts > 0]
    assert len(seen) == 120
    chi2 = ((seen - 100) ** 2 / 100).sum()
    assert chi2 < 168.0  # chi-square with 119 degrees of freedom, p = 0.001
    # Classes: 3 of 5 eligible per episode, each class in 3/5 of the episodes.
    eps = EpisodeSampler(np.repeat(np.arange(5), 2)).sample(3, 1, 1, 5000, np.random.default_rng(1))
    freq = np.bincount(eps.classes.ravel(), minlength=5) / 5000
    assert np.abs(freq - 0.6).max() < 5 * np.sqrt(0.6 * 0.4 / 5000)


def test_one_pool_refuses_too_few_classes_with_the_config_to_change():
    with pytest.raises(UserError, match=r"sampler.ways=5: only 4 classes have more than sampler.queries=3 "
                                        r"images; lower --config.sampler.ways or --config.sampler.queries"):
        EpisodeSampler(TRAIN_LABELS).sample(5, 1, 3, 1, np.random.default_rng(0))
