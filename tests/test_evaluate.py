import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from navee_jax.evaluate.fewshot import episode_accuracy, few_shot_report, sample_episodes
from navee_jax.evaluate.retrieval import average_precision_from_distances, mean_average_precision


def sklearn_map(query, query_labels, support, support_labels):
    aps = []
    for q, lab in zip(query, query_labels):
        d = np.sqrt(((support - q) ** 2).sum(1))
        aps.append(average_precision_score(support_labels == lab, -d))
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", range(4))
def test_map_equals_sklearn_on_random_embeddings(seed):
    rng = np.random.default_rng(seed)
    support, query = rng.normal(size=(60, 16)), rng.normal(size=(25, 16))
    support_labels, query_labels = rng.integers(0, 5, 60), rng.integers(0, 5, 25)
    support_labels[:5] = np.arange(5)  # every query has a relevant support image
    got, n = mean_average_precision(query.astype(np.float32), query_labels, support.astype(np.float32), support_labels)
    assert n == 25
    assert got == pytest.approx(sklearn_map(query, query_labels, support, support_labels), abs=1e-6)


def test_tied_distances_ranked_like_sklearn():
    rng = np.random.default_rng(7)
    distances = rng.integers(0, 4, size=(30, 40)).astype(float)  # many ties
    relevant = rng.random((30, 40)) < 0.3
    relevant[:, 0] = True
    want = [average_precision_score(r, -d) for d, r in zip(distances, relevant)]
    np.testing.assert_allclose(average_precision_from_distances(distances, relevant), want, atol=1e-12)


def test_collapsed_embedding_scores_the_base_rate():
    # All embeddings equal: every ranking is one tie block, so AP = fraction relevant (no lucky order).
    labels = np.array([0, 0, 1, 1, 1, 2])
    query, support = np.zeros((3, 4), np.float32), np.zeros((6, 4), np.float32)
    got, _ = mean_average_precision(query, np.array([0, 1, 2]), support, labels)
    assert got == pytest.approx(np.mean([2 / 6, 3 / 6, 1 / 6]))


def test_query_without_relevant_support_is_not_scored():
    support = np.array([[0, 0], [1, 1], [2, 2]], np.float32)
    got, n = mean_average_precision(np.zeros((2, 2), np.float32), np.array([0, 5]), support, np.array([0, 1, 1]))
    assert n == 1 and got == pytest.approx(1.0)


def test_episodes_are_n_way_k_shot_and_seeded():
    s_lab, q_lab = np.repeat(np.arange(6), 7), np.repeat(np.arange(6), 5)
    eps = sample_episodes(s_lab, q_lab, ways=4, shots=3, queries=2, num_episodes=20, seed=1)
    assert eps.support.shape == (20, 12) and eps.query.shape == (20, 8)
    for e in range(20):
        global_s = s_lab[eps.support[e]]
        # episode-local labels map one-to-one onto 4 distinct real classes, K images each
        assert len(np.unique(global_s)) == 4 and len(np.unique(eps.support[e])) == 12
        for local in range(4):
            assert len(np.unique(global_s[eps.support_labels[e] == local])) == 1
            assert len(np.unique(q_lab[eps.query[e][eps.query_labels[e] == local]])) == 1
            assert (global_s[eps.support_labels[e] == local][0]
                    == q_lab[eps.query[e][eps.query_labels[e] == local]][0])
    again = sample_episodes(s_lab, q_lab, 4, 3, 2, 20, seed=1)
    np.testing.assert_array_equal(eps.support, again.support)


def test_episode_accuracy_matches_brute_force_1nn():
    rng = np.random.default_rng(2)
    s_lab, q_lab = np.repeat(np.arange(5), 6), np.repeat(np.arange(5), 4)
    s_emb = rng.normal(size=(30, 8)).astype(np.float32) + s_lab[:, None]
    q_emb = rng.normal(size=(20, 8)).astype(np.float32) + q_lab[:, None]
    eps = sample_episodes(s_lab, q_lab, ways=3, shots=2, queries=3, num_episodes=15, seed=0)
    got = episode_accuracy(s_emb, q_emb, eps)
    for e in range(15):
        s, q = s_emb[eps.support[e]], q_emb[eps.query[e]]
        nearest = np.argmin(((q[:, None] - s[None]) ** 2).sum(-1), axis=1)
        assert got[e] == pytest.approx(np.mean(eps.support_labels[e][nearest] == eps.query_labels[e]))


def test_few_shot_report_explains_impossible_settings():
    s_lab, q_lab = np.repeat(np.arange(4), 3), np.repeat(np.arange(4), 3)
    emb = np.zeros((12, 2), np.float32)
    report = few_shot_report(emb, s_lab, emb, q_lab, ways=4, shots=(1, 5), queries=2, num_episodes=4, seed=0)
    assert "accuracy" in report["4-way 1-shot"]
    assert "skipped" in report["4-way 5-shot"] and "min 3 support" in report["4-way 5-shot"]["skipped"]
