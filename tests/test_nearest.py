"""NearestNeighbourTable: exact 1-NN over many episodes, against a brute-force float64 reference."""

import numpy as np
import pytest

from navee_jax.data.episodes import EpisodeSampler
from navee_jax.evaluate import nearest
from navee_jax.evaluate.nearest import NearestNeighbourTable


def sample_episodes(s_lab, q_lab, ways, shots, queries, num_episodes, seed):
    """The evaluation's episodes of one cell (its rng: (seed, ways, shots))."""
    return EpisodeSampler(s_lab, q_lab).sample(ways, shots, queries, num_episodes,
                                               np.random.default_rng([seed, ways, shots]))


def brute_force_1nn(support_pool, query_pool, eps):
    """Per (episode, query slot): label of the nearest support image by float64 squared distance from direct
    differences, one episode at a time; ties go to the first tied slot (class-major: the smallest label);
    -1 on padding."""
    s64, q64 = support_pool.astype(np.float64), query_pool.astype(np.float64)
    pred = np.full(eps.query.shape, -1)
    for e in range(len(eps.support)):
        d = np.sum((q64[eps.query[e]][:, None, :] - s64[eps.support[e]][None, :, :]) ** 2, axis=2)
        nearest = eps.support_labels[e][np.argmin(d, axis=1)]  # argmin: the first of equal minima
        pred[e] = np.where(eps.query_mask[e], nearest, -1)
    return pred


def pools(rng, classes, support, query, dim, kind):
    s_lab, q_lab = np.repeat(np.arange(classes), support), np.repeat(np.arange(classes), query)
    if kind == "integer":  # few distinct values: many exact ties between different images
        s = rng.integers(0, 3, (len(s_lab), dim))
        q = rng.integers(0, 3, (len(q_lab), dim))
        s[1::7] = s[::7][:len(s[1::7])]  # duplicated support images
    elif kind == "far":  # large offset: the float32 expansion cancels catastrophically, every order is unsure
        centres = rng.integers(0, 4, (classes, dim))
        s = 4096 + centres[s_lab] + rng.integers(0, 3, (len(s_lab), dim)) / 8
        q = 4096 + centres[q_lab] + rng.integers(0, 3, (len(q_lab), dim)) / 8
    else:
        centres = rng.normal(size=(classes, dim))
        s = centres[s_lab] + 0.8 * rng.normal(size=(len(s_lab), dim))
        q = centres[q_lab] + 0.8 * rng.normal(size=(len(q_lab), dim))
    return s.astype(np.float32), s_lab, q.astype(np.float32), q_lab


@pytest.mark.parametrize("kind", ["normal", "integer", "far"])
@pytest.mark.parametrize("depth", [0, 6, 128, 400])
def test_predictions_equal_brute_force_float64(kind, depth):
    # depth 0: every query reads all its episode's distances; 6: walks are cut short (or their rivals run off
    # the ranking) and fall back to that; 128: walks of up to M positions; 400: the whole pool is ranked.
    rng = np.random.default_rng(["normal", "integer", "far"].index(kind))
    s, s_lab, q, q_lab = pools(rng, classes=30, support=6, query=4, dim=5, kind=kind)
    keep = np.arange(len(q_lab)) % 5 != 2  # some classes lose a query image: padded, masked slots
    q, q_lab = q[keep], q_lab[keep]
    table = NearestNeighbourTable(s, q, depth=depth)
    for ways, shots in [(2, 1), (5, 3), (20, 2), (30, 6)]:
        eps = sample_episodes(s_lab, q_lab, ways, shots, queries=4, num_episodes=60, seed=ways)
        got = table.predict(eps.support, eps.support_labels, eps.query, eps.query_mask)
        np.testing.assert_array_equal(got, brute_force_1nn(s, q, eps), err_msg=f"{kind} {ways}-way {shots}-shot")


def test_ranking_a_few_rows_at_a_time_changes_nothing(monkeypatch):
    rng = np.random.default_rng(3)
    s, s_lab, q, q_lab = pools(rng, classes=30, support=6, query=4, dim=5, kind="integer")
    whole = NearestNeighbourTable(s, q, depth=20)
    monkeypatch.setattr(nearest, "_RANKING_BYTES", 7 * 8 * len(s))  # blocks of 7 of the 120 query rows
    blocks = NearestNeighbourTable(s, q, depth=20)
    np.testing.assert_array_equal(np.take_along_axis(blocks.expanded, blocks.ranked, axis=1), whole.ranked_values)
    np.testing.assert_array_equal(blocks.ranked_values, whole.ranked_values)
    eps = sample_episodes(s_lab, q_lab, 20, 2, queries=4, num_episodes=30, seed=0)
    got = blocks.predict(eps.support, eps.support_labels, eps.query, eps.query_mask)
    np.testing.assert_array_equal(got, brute_force_1nn(s, q, eps))


@pytest.mark.parametrize("depth", [0, 4])
def test_a_tie_goes_to_the_smallest_label_even_when_the_expansion_orders_it_last(depth):
    # Query at the origin; two support images at the same exact distance 1, one of them far down the pool.
    s = np.zeros((40, 2), np.float32) + 5
    s[3], s[37] = (1, 0), (0, 1)
    q = np.zeros((1, 2), np.float32)
    table = NearestNeighbourTable(s, q, depth=depth)
    support = np.array([[37, 10, 3, 11]])  # class 0 owns 37 and 10, class 1 owns 3 and 11
    labels = np.array([[0, 0, 1, 1]])
    assert table.predict(support, labels, np.array([[0]]), np.array([[True]]))[0, 0] == 0
    assert table.predict(support[:, [2, 3, 0, 1]], labels, np.array([[0]]), np.array([[True]]))[0, 0] == 0


def test_episodes_of_different_sizes_are_rejected():
    table = NearestNeighbourTable(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="must describe the same episodes"):
        table.predict(np.array([[0, 1]]), np.array([[0, 1]]), np.array([[2], [1]]), np.array([[True], [True]]))


def test_non_finite_embeddings_are_rejected():
    s = np.eye(3, dtype=np.float32)
    s[1, 2] = np.nan
    with pytest.raises(ValueError, match="support embeddings contain NaN"):
        NearestNeighbourTable(s, np.eye(3, dtype=np.float32))
