"""feature_classifiers against scikit-learn and NumPy on small seeded data."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from navee_jax.evaluate.feature_classifiers import choose_k, knn_proba, mlp_fit_predict_proba, standardize

# Short training runs on purpose: reaching max_iter is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(seed: int, n: int, d: int, labels) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.choice(np.asarray(labels), size=n)


def _full(clf, x: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's predict_proba, whose columns are the training labels only, spread over 0..C-1."""
    out = np.zeros((len(x), num_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


@pytest.mark.parametrize("k,batch", [(1, 7), (2, 16), (3, 5), (5, 64), (9, 1024)])
def test_knn_proba_matches_sklearn(k, batch):
    num_classes = 6
    train_x, train_y = _data(0, 60, 5, [0, 2, 3, 5])  # labels 1 and 4 absent from training
    query_x, _ = _data(1, 37, 5, [0])
    proba = knn_proba(train_x, train_y, query_x, k, num_classes, batch=batch)
    sk = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_x, train_y)
    assert proba.shape == (37, num_classes) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, _full(sk, query_x, num_classes), rtol=0, atol=1e-6)
    assert not proba[:, [1, 4]].any()
    np.testing.assert_array_equal(proba.argmax(axis=1), sk.predict(query_x))  # includes class ties for k >= 2


def test_knn_equal_distances_lower_index_wins():
    train_x = np.array([[0.0], [1.0], [-1.0], [1.0]], np.float32)
    train_y = np.array([0, 1, 2, 3])
    query = np.zeros((1, 1), np.float32)
    # nearest: index 0; then indices 1, 2, 3 all at distance 1, taken in index order
    np.testing.assert_array_equal(knn_proba(train_x, train_y, query, 2, 4), [[0.5, 0.5, 0, 0]])
    three = knn_proba(train_x, train_y, query, 3, 4)
    np.testing.assert_allclose(three, [[1 / 3, 1 / 3, 1 / 3, 0]], rtol=1e-6)
    assert three.argmax(axis=1)[0] == 0  # three-way class tie: smallest label
    with pytest.raises(ValueError, match="k must be"):
        knn_proba(train_x, train_y, query, 5, 4)
    with pytest.raises(ValueError, match="labels"):
        knn_proba(train_x, np.array([0, 1, 2, 4]), query, 1, 4)


def test_choose_k_matches_sklearn_loop():
    num_classes = 4
    train_x, train_y = _data(2, 40, 3, [0, 1, 3])
    val_x, val_y = _data(3, 30, 3, [0, 1, 2, 3])
    ks = (1, 3, 5, 7, 9, 15, 21, 50)  # 50 > 40 training vectors: skipped
    best, accuracy = choose_k(train_x, train_y, val_x, val_y, num_classes, ks=ks, batch=8)
    expected = {k: KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_x, train_y).score(val_x, val_y)
                for k in ks if k <= 40}
    assert accuracy.keys() == expected.keys()
    for k in expected:
        assert accuracy[k] == pytest.approx(expected[k])
    top = max(expected.values())
    assert best == min(k for k, a in expected.items() if a == pytest.approx(top))


def test_standardize_matches_numpy():
    rng = np.random.default_rng(4)
    train = rng.normal(size=(50, 4)) * [1.0, 10.0, 0.1, 1.0] + [0.0, 5.0, -3.0, 0.0]
    train[:, 3] = 7.0  # constant column: scale 1, maps to 0
    others = [rng.normal(size=(20, 4)), rng.normal(size=(3, 4))]
    mean, std = train.mean(axis=0), train.std(axis=0)  # population std
    std[std == 0] = 1.0
    out = standardize(train, *others)
    assert len(out) == 3
    for got, x in zip(out, [train, *others]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, (x - mean) / std, rtol=1e-5, atol=1e-5)
    assert not out[0][:, 3].any()


def _pipeline(hidden, seed, max_iter, **kwargs):
    return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                                                         random_state=seed, max_iter=max_iter, **kwargs))


def test_mlp_equals_sklearn_pipeline():
    train_x, train_y = _data(5, 90, 6, [0, 1, 2])
    test_x, _ = _data(6, 25, 6, [0])
    result = mlp_fit_predict_proba(train_x, train_y, [test_x, train_x], 3, seed=3, max_iter=15)
    ref = _pipeline((256, 150), 3, 15).fit(train_x, train_y)
    assert len(result.probas) == 2 and result.val_accuracy is None
    assert result.epochs == ref[-1].n_iter_
    for got, x in zip(result.probas, [test_x, train_x]):
        assert got.shape == (len(x), 3) and got.dtype == np.float32
        np.testing.assert_array_equal(got, ref.predict_proba(x))  # same operations on the same float32 data
        np.testing.assert_array_equal(got.argmax(axis=1), ref.predict(x))


@pytest.mark.parametrize("labels", [[0, 2, 4], [1, 3]])  # [1, 3]: scikit-learn's binary (one logistic) output
def test_mlp_absent_labels_get_zero_columns(labels):
    train_x, train_y = _data(7, 60, 4, labels)
    test_x, _ = _data(8, 15, 4, [0])
    (got,) = mlp_fit_predict_proba(train_x, train_y, [test_x], 5, hidden=(16,), seed=1, max_iter=20).probas
    ref = _pipeline((16,), 1, 20).fit(train_x, train_y)
    assert got.shape == (15, 5)
    np.testing.assert_array_equal(got, _full(ref, test_x, 5))
    np.testing.assert_array_equal(got.argmax(axis=1), ref.predict(test_x))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def _blobs(rng: np.random.Generator, n: int, d: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    return (np.eye(3, d)[y] * separation + rng.normal(size=(n, d))).astype(np.float32), y


def test_mlp_validation_picks_the_epoch_a_brute_force_loop_picks():
    rng = np.random.default_rng(0)
    (train_x, train_y), (val_x, val_y), (test_x, _) = (_blobs(rng, n, 5, 1.0) for n in (80, 40, 20))
    hidden, seed, max_iter = (32, 16), 2, 20
    result = mlp_fit_predict_proba(train_x, train_y, [test_x], 3, hidden=hidden, seed=seed, max_iter=max_iter,
                                   val=(val_x, val_y))
    # Reference: for every epoch count e, a fresh scaler + MLP trained by e partial_fit calls; the best
    # validation accuracy wins, the earliest e on ties.
    scaler = StandardScaler().fit(train_x)
    train_s, val_s, test_s = (scaler.transform(x) for x in (train_x, val_x, test_x))
    accuracies, probas = [], []
    for e in range(1, max_iter + 1):
        clf = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="adam",
                            random_state=np.random.RandomState(seed), max_iter=max_iter)
        for _ in range(e):
            clf.partial_fit(train_s, train_y, classes=[0, 1, 2])
        accuracies.append(float(np.mean(clf.predict(val_s) == val_y)))
        probas.append(clf.predict_proba(test_s))
    best = int(np.argmax(accuracies))
    # These data make the choice non-trivial: the best accuracy first comes mid-run, and recurs later.
    assert 1 < best + 1 < max_iter and accuracies.count(accuracies[best]) > 1
    assert result.epochs == best + 1
    assert result.val_accuracy == pytest.approx(accuracies[best])
    np.testing.assert_array_equal(result.probas[0], probas[best])


def test_mlp_separates_easy_classes():
    rng = np.random.default_rng(12)
    (train_x, train_y), (test_x, test_y) = _blobs(rng, 90, 3, 4.0), _blobs(rng, 60, 3, 4.0)
    (proba,) = mlp_fit_predict_proba(train_x, train_y, [test_x], 3, hidden=(32, 16), max_iter=100).probas
    assert np.mean(proba.argmax(axis=1) == test_y) > 0.9
