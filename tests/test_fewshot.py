import json
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from navee_jax.data.episodes import EpisodeSampler
from navee_jax.evaluate.classifiers import (MLPSearch, knn_predict, logistic_regression_fit,
                                            logistic_regression_proba, prototype_predict)
from navee_jax.evaluate.fewshot import few_shot_grid, few_shot_report, standard_protocol, validation_split
from navee_jax.evaluate.records import FewShotCell


def sample_episodes(support_labels, query_labels, ways, shots, queries, num_episodes, seed, min_queries=1):
    """The episodes the evaluation draws for one cell (its rng: (seed, ways, shots))."""
    return EpisodeSampler(support_labels, query_labels).sample(
        ways, shots, queries, num_episodes, np.random.default_rng([seed, ways, shots]), min_queries)


def by_name(report):
    """{"N-way K-shot": cell} of a list of FewShotCell, checking that no setting appears twice."""
    named = {c.name: c for c in report}
    assert len(named) == len(report)
    return named


def pools(rng, classes=8, support=6, query=5, dim=8, spread=1.0, integer=False):
    """Support and query pools with class structure; integer=True gives small integers (exact distances, ties)."""
    centres = rng.normal(size=(classes, dim)) * 2
    s_lab, q_lab = np.repeat(np.arange(classes), support), np.repeat(np.arange(classes), query)
    s = centres[s_lab] + spread * rng.normal(size=(len(s_lab), dim))
    q = centres[q_lab] + spread * rng.normal(size=(len(q_lab), dim))
    if integer:
        s, q = np.round(s / 2), np.round(q / 2)
    return s.astype(np.float32), s_lab, q.astype(np.float32), q_lab


def tied_episodes(rng, episodes=30, ways=4, shots=4, queries=10, dim=3):
    """Integer embeddings in {0, 1, 2}^dim with duplicated support images: many distance and vote ties."""
    s = rng.integers(0, 3, (episodes, ways * shots, dim)).astype(np.float32)
    s[:, 1] = s[:, ways * shots - 1]
    y = np.stack([rng.permutation(np.repeat(np.arange(ways), shots)) for _ in range(episodes)])
    q = rng.integers(0, 3, (episodes, queries, dim)).astype(np.float32)
    return s, y, q


def sklearn_per_episode(make, s, y, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more than 50% unique classes" on small support sets
        return np.stack([make().fit(s[e], y[e]).predict(q[e]) for e in range(len(s))])


def test_episodes_are_n_way_k_shot_class_major_and_seeded():
    s_lab, q_lab = np.repeat(np.arange(6), 7), np.repeat(np.arange(6), 5)
    eps = sample_episodes(s_lab, q_lab, ways=4, shots=3, queries=2, num_episodes=20, seed=1)
    assert eps.support.shape == (20, 12) and eps.query.shape == (20, 8) and eps.query_mask.all()
    np.testing.assert_array_equal(eps.support_labels[0], np.repeat(np.arange(4), 3))
    for e in range(20):
        assert len(np.unique(eps.classes[e])) == 4 and len(np.unique(eps.support[e])) == 12
        assert len(np.unique(eps.query[e])) == 8
        np.testing.assert_array_equal(s_lab[eps.support[e]], eps.classes[e][eps.support_labels[e]])
        np.testing.assert_array_equal(q_lab[eps.query[e]], eps.classes[e][eps.query_labels[e]])
    again = sample_episodes(s_lab, q_lab, 4, 3, 2, 20, seed=1)
    other = sample_episodes(s_lab, q_lab, 4, 3, 2, 20, seed=2)
    np.testing.assert_array_equal(eps.support, again.support)
    np.testing.assert_array_equal(eps.query, again.query)
    assert not np.array_equal(eps.support, other.support)


def test_classes_short_of_queries_are_padded_and_masked():
    s_lab = np.repeat(np.arange(4), 3)
    q_lab = np.repeat(np.arange(4), [1, 2, 6, 3])
    eps = sample_episodes(s_lab, q_lab, ways=4, shots=2, queries=4, num_episodes=10, seed=0)
    assert eps.query.shape == (10, 16)  # Q = min(4, most query images of any class)
    for e in range(10):
        for local, c in enumerate(eps.classes[e]):
            slots = eps.query_labels[e] == local
            valid = eps.query[e][slots & eps.query_mask[e]]
            assert len(valid) == min(4, np.count_nonzero(q_lab == c)) and (q_lab[valid] == c).all()


def test_validation_split_keeps_a_test_query_per_class():
    mask = np.array([[True] * 5 + [True, True, False, False, False] + [True] + [False] * 4])
    val, test = validation_split(mask, ways=3, val_fraction=0.2)
    np.testing.assert_array_equal(val[0], [True] + [False] * 4 + [True] + [False] * 4 + [False] * 5)
    np.testing.assert_array_equal(test, mask & ~val)
    # The last class has a single query: it is kept for testing.


@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_equals_sklearn_on_random_embeddings(k):
    rng = np.random.default_rng(k)
    s, y, q = rng.normal(size=(20, 15, 8)), np.tile(np.repeat(np.arange(5), 3), (20, 1)), rng.normal(size=(20, 9, 8))
    s, q = s.astype(np.float32), q.astype(np.float32)
    got = np.asarray(knn_predict(s, y, q, k, 5))
    want = sklearn_per_episode(lambda: KNeighborsClassifier(n_neighbors=k, algorithm="brute"), s, y, q)
    np.testing.assert_array_equal(got, want)


def brute_force_knn(s, y, q, k, ways):
    """k smallest (squared distance, index), then the smallest label among the most voted."""
    out = np.empty(q.shape[:2], np.int64)
    for e in range(len(s)):
        for i, x in enumerate(q[e]):
            d = ((s[e].astype(np.float64) - x) ** 2).sum(1)
            nearest = sorted(range(len(d)), key=lambda j: (d[j], j))[:k]
            votes = np.bincount(y[e][nearest], minlength=ways)
            out[e, i] = np.flatnonzero(votes == votes.max())[0]
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_knn_with_ties_follows_its_rule_and_matches_sklearn_where_sklearn_is_defined(k):
    rng = np.random.default_rng(10 + k)
    s, y, q = tied_episodes(rng)
    got = np.asarray(knn_predict(s, y, q, k, 4))
    np.testing.assert_array_equal(got, brute_force_knn(s, y, q, k, 4))
    want = sklearn_per_episode(lambda: KNeighborsClassifier(n_neighbors=k, algorithm="brute"), s, y, q)
    d = np.sort(((q[:, :, None] - s[:, None]) ** 2).sum(-1), axis=-1)
    unambiguous = d[..., k - 1] != d[..., k]  # the k-th and (k+1)-th neighbours are not tied
    assert unambiguous.mean() > 0.2 and (~unambiguous).any()
    np.testing.assert_array_equal(got[unambiguous], want[unambiguous])
    if k == 1:  # sklearn keeps the first of equally near images: exact everywhere
        np.testing.assert_array_equal(got, want)


def test_prototype_equals_nearest_centroid_on_random_embeddings():
    rng = np.random.default_rng(0)
    s, y, q = rng.normal(size=(15, 25, 8)), np.tile(np.repeat(np.arange(5), 5), (15, 1)), rng.normal(size=(15, 9, 8))
    s, q = s.astype(np.float32), q.astype(np.float32)
    want = sklearn_per_episode(NearestCentroid, s, y, q)
    np.testing.assert_array_equal(np.asarray(prototype_predict(s, y, q, 5)), want)


@pytest.mark.parametrize("shots", [1, 2, 4])
def test_prototype_equals_nearest_centroid_with_ties(shots):
    rng = np.random.default_rng(shots)
    s, y, q = tied_episodes(rng, shots=shots)
    got = np.asarray(prototype_predict(s, y, q, 4))
    np.testing.assert_array_equal(got, sklearn_per_episode(NearestCentroid, s, y, q))
    protos = np.stack([[s[e][y[e] == c].mean(0) for c in range(4)] for e in range(len(s))])
    d = ((q[:, :, None] - protos[:, None]) ** 2).sum(-1)
    assert (np.sort(d, -1)[..., 0] == np.sort(d, -1)[..., 1]).any()  # ties between prototypes occurred


@pytest.mark.parametrize("ways", [2, 5])
def test_logistic_regression_agrees_with_sklearn(ways):
    rng = np.random.default_rng(ways)
    episodes, shots, dim = 6, 4, 16
    centres = rng.normal(size=(episodes, ways, 1, dim)) * 0.7
    s = (centres + rng.normal(size=(episodes, ways, shots, dim))).reshape(episodes, -1, dim).astype(np.float32)
    q = (centres + rng.normal(size=(episodes, ways, 10, dim))).reshape(episodes, -1, dim).astype(np.float32)
    y = np.tile(np.repeat(np.arange(ways), shots), (episodes, 1))
    w, b = logistic_regression_fit(s, y, ways, C=0.5)
    got = np.asarray(logistic_regression_proba(w, b, q))
    want = np.stack([LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(s[e], y[e]).predict_proba(q[e])
                     for e in range(episodes)])
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.99
    np.testing.assert_allclose(got, want, atol=1e-3)


def grid_cells(report):
    return {name: cell for name, cell in by_name(report).items() if cell.skipped is None}


@pytest.mark.parametrize("max_matrix_bytes", [1 << 30, 0])
def test_grid_1nn_equals_sklearn_episode_loop(max_matrix_bytes):
    rng = np.random.default_rng(1)
    s, s_lab, q, q_lab = pools(rng, integer=True)  # integer embeddings: exact distances and real ties
    report = few_shot_grid(s, s_lab, q, q_lab, ways=(2, 5), shots=(1, 3), queries=4, episodes=12, seed=3,
                           max_matrix_bytes=max_matrix_bytes)
    assert [(c.ways, c.shots, c.classifier) for c in report] == [(2, 1, "1nn"), (2, 3, "1nn"), (5, 1, "1nn"),
                                                                 (5, 3, "1nn")]  # product(ways, shots) order
    report = by_name(report)
    for n in (2, 5):
        for k in (1, 3):
            eps = sample_episodes(s_lab, q_lab, n, k, 4, 12, seed=3)
            pred = sklearn_per_episode(lambda: KNeighborsClassifier(n_neighbors=1, algorithm="brute"),
                                       s[eps.support], eps.support_labels, q[eps.query])
            acc = (pred == eps.query_labels).mean(axis=1)
            cell = report[f"{n}-way {k}-shot"]
            assert cell.mean == acc.mean()
            assert cell.ci95 == pytest.approx(1.96 * acc.std(ddof=1) / np.sqrt(12), rel=1e-12)
            assert (cell.episodes, cell.queries_per_class, cell.skipped, cell.details) == (12, 4, None, {})


@pytest.mark.parametrize("classifier", ["knn", "prototype", "logreg"])
def test_grid_classifiers_equal_their_batched_functions(classifier):
    rng = np.random.default_rng(2)
    s, s_lab, q, q_lab = pools(rng)
    report = few_shot_grid(s, s_lab, q, q_lab, ways=(3,), shots=(2,), queries=3, episodes=5, seed=0,
                           classifier=classifier, k=3)
    eps = sample_episodes(s_lab, q_lab, 3, 2, 3, 5, seed=0)
    xs, xq = s[eps.support], q[eps.query]
    if classifier == "knn":
        pred = knn_predict(xs, eps.support_labels, xq, 3, 3)
    elif classifier == "prototype":
        pred = prototype_predict(xs, eps.support_labels, xq, 3)
    else:
        pred = logistic_regression_proba(*logistic_regression_fit(xs, eps.support_labels, 3), xq).argmax(-1)
    acc = (np.asarray(pred) == eps.query_labels).mean(axis=1)
    (cell,) = report
    assert (cell.name, cell.classifier) == ("3-way 2-shot", classifier)
    assert cell.mean == pytest.approx(acc.mean(), abs=1e-12)
    assert acc.mean() > 0.6  # well-separated classes


def test_grid_mlp_selects_on_validation_queries_and_is_seeded():
    rng = np.random.default_rng(4)
    s, s_lab, q, q_lab = pools(rng, classes=5, support=4, query=5, dim=12, spread=1.5)
    search = MLPSearch(hidden=(16,), learning_rate=(1e-3, 3e-2), weight_decay=(0.0,), dropout=(0.0, 0.5),
                       pca_dim=(6,), steps=40)
    run = lambda seed: few_shot_grid(s, s_lab, q, q_lab, ways=(3,), shots=(2,), queries=5, episodes=4,  # noqa: E731
                                     seed=seed, classifier="mlp", mlp=search)
    (cell,) = run(0)
    assert (cell.name, cell.classifier) == ("3-way 2-shot", "mlp")
    assert cell.details["validation_queries"] == 4 * 3 * 1  # round(0.2 * 5) = 1 query per class
    assert cell.details["selected"]["learning_rate"] == 3e-2  # 40 steps at 1e-3 barely move from the initialisation
    assert cell.details["validation_accuracy"] > 0.6 and cell.mean > 0.6  # chance: 1/3
    assert run(0) == [cell]
    assert run(1)[0].mean != cell.mean
    flat = cell.to_dict()  # details sit beside the fixed keys, and come back as details
    assert flat["selected"] == cell.details["selected"] and FewShotCell.from_dict(flat) == cell


def test_grid_skips_impossible_cells_with_the_reason():
    s_lab, q_lab = np.repeat(np.arange(4), [3, 3, 3, 5]), np.repeat(np.arange(4), [2, 2, 2, 1])
    s, q = np.zeros((len(s_lab), 2), np.float32), np.zeros((len(q_lab), 2), np.float32)
    report = few_shot_grid(s, s_lab, q, q_lab, ways=(2, 4, 5), shots=(1, 4), queries=2, episodes=3)
    assert set(grid_cells(report)) == {"2-way 1-shot", "4-way 1-shot"}
    report = by_name(report)
    why = "2-way 4-shot needs 2 classes with >= 4 support and >= 1 query images; 1 classes qualify"
    assert report["2-way 4-shot"] == FewShotCell.skip(2, 4, "1nn", 3, why)
    assert report["2-way 4-shot"].to_dict() == {
        "ways": 2, "shots": 4, "classifier": "1nn", "mean": None, "ci95": None, "episodes": 3,
        "queries_per_class": None, "skipped": why}
    assert "4 classes qualify" in report["5-way 1-shot"].skipped
    knn = by_name(few_shot_grid(s, s_lab, q, q_lab, ways=(2, 4), shots=(1,), queries=2, episodes=3,
                                classifier="knn", k=3))
    assert "k-NN with k=3 needs >= 3 support images; an episode has 2" == knn["2-way 1-shot"].skipped
    assert knn["2-way 1-shot"].classifier == "knn" and knn["2-way 1-shot"].mean is None
    (mlp,) = few_shot_grid(s, s_lab, q, q_lab, ways=(4,), shots=(1,), classifier="mlp")
    assert "needs 4 classes with >= 1 support and >= 2 query images; 3 classes qualify" in mlp.skipped
    for classifier in ("1nn", "knn", "prototype"):  # an empty pool: every cell skipped, whichever is empty
        no_support = few_shot_grid(s[:0], s_lab[:0], q, q_lab, ways=(2,), shots=(2,), classifier=classifier, k=3)
        no_query = few_shot_grid(s, s_lab, q[:0], q_lab[:0], ways=(2,), shots=(2,), classifier=classifier, k=3)
        for report in (no_support, no_query):
            assert report[0].skipped.endswith("; 0 classes qualify"), (classifier, report)


def test_grid_same_seed_identical_other_seed_differs():
    rng = np.random.default_rng(5)
    s, s_lab, q, q_lab = pools(rng, spread=3.0)
    run = lambda seed: few_shot_grid(s, s_lab, q, q_lab, ways=(2, 5), shots=(1, 2), queries=5,  # noqa: E731
                                     episodes=10, seed=seed)
    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_standard_protocol_reports_600_episode_mean_and_ci_by_hand():
    rng = np.random.default_rng(6)
    s, s_lab, q, q_lab = pools(rng, classes=10, support=5, query=3, dim=4, spread=4.0)
    report = standard_protocol(s, s_lab, q, q_lab)
    assert [c.name for c in report] == ["5-way 1-shot", "5-way 5-shot"]
    report = by_name(report)
    for shots in (1, 5):
        eps = sample_episodes(s_lab, q_lab, 5, shots, 15, 600, seed=0)
        correct = []
        for e in range(600):
            xs, xq = s[eps.support[e]].astype(np.float64), q[eps.query[e]].astype(np.float64)
            nearest = np.argmin(((xq[:, None] - xs[None]) ** 2).sum(-1), axis=1)
            correct.append(np.mean(eps.support_labels[e][nearest] == eps.query_labels[e]))
        mean = sum(correct) / 600
        std = (sum((c - mean) ** 2 for c in correct) / 599) ** 0.5
        cell = report[f"5-way {shots}-shot"]
        assert cell.episodes == 600 and cell.queries_per_class == 3
        assert cell.mean == pytest.approx(mean, abs=1e-12)
        assert cell.ci95 == pytest.approx(1.96 * std / 600 ** 0.5, rel=1e-9)


def test_few_shot_report_keeps_its_contract():
    s_lab, q_lab = np.repeat(np.arange(4), 3), np.repeat(np.arange(4), 3)
    emb = np.zeros((12, 2), np.float32)
    one, five = few_shot_report(emb, s_lab, emb, q_lab, ways=4, shots=(1, 5), queries=2, num_episodes=4, seed=0)
    assert one.to_dict() == {"ways": 4, "shots": 1, "classifier": "1nn", "mean": 0.25, "ci95": 0.0, "episodes": 4,
                             "queries_per_class": 2}  # all images collide: the first support image wins
    assert five.name == "4-way 5-shot" and "needs 4 classes with >= 5 support" in five.skipped


def test_bad_arguments_are_rejected():
    emb, lab = np.zeros((4, 2), np.float32), np.arange(4)
    with pytest.raises(ValueError, match="unknown classifier"):
        few_shot_grid(emb, lab, emb, lab, classifier="svm")
    with pytest.raises(ValueError, match="ways >= 2"):
        few_shot_grid(emb, lab, emb, lab, ways=(1,))


def test_few_shot_cell_summary_by_hand_and_round_trip():
    acc = np.array([0.5, 1.0, 0.75, 0.25])
    cell = FewShotCell.from_accuracies(5, 1, "prototype", acc, 15, inner_steps=10)
    mean = (0.5 + 1.0 + 0.75 + 0.25) / 4
    std = (sum((a - mean) ** 2 for a in acc) / 3) ** 0.5
    assert cell.mean == mean and cell.ci95 == pytest.approx(1.96 * std / 2, rel=1e-15)
    assert (cell.name, cell.episodes, cell.queries_per_class, cell.skipped) == ("5-way 1-shot", 4, 15, None)
    flat = cell.to_dict()
    assert flat == {"ways": 5, "shots": 1, "classifier": "prototype", "mean": mean, "ci95": cell.ci95,
                    "episodes": 4, "queries_per_class": 15, "inner_steps": 10}
    assert all(type(flat[k]) is t for k, t in [("ways", int), ("mean", float), ("ci95", float), ("episodes", int)])
    assert FewShotCell.from_dict(flat) == cell and FewShotCell.from_dict(json.loads(json.dumps(flat))) == cell
    skipped = FewShotCell.skip(20, 5, "1nn", 600, "too few classes")
    assert skipped.to_dict()["skipped"] == "too few classes" and FewShotCell.from_dict(skipped.to_dict()) == skipped
    assert "skipped" not in flat
    one = FewShotCell.from_accuracies(2, 1, "1nn", np.array([0.5]), 3)
    assert one.mean == 0.5 and np.isnan(one.ci95) and one.episodes == 1
    with pytest.raises(ValueError, match="clash"):
        FewShotCell.from_accuracies(2, 1, "1nn", acc, 3, mean=1.0)
