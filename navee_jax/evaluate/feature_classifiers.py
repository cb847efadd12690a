"""Classifiers on fixed feature vectors for a supervised train / validation / test split.

This is the "classical route" of a fashion-image study: a fixed extractor (HOG, or a frozen network's
features) followed by k-NN or an MLP trained on the whole training split, tuned on the validation split and
scored on the test split. It complements `navee_jax.evaluate.classifiers`, which classifies few-shot episodes;
here there is one large training set instead of many small support sets, so the work is batched over query
chunks instead of over episodes.

Conventions (shared with the rest of `evaluate`):

* Labels are integers 0..num_classes-1; every probability matrix has one column per label, including labels
  absent from the training set (whose column is zero), so outputs of different classifiers line up for
  `navee_jax.evaluate.voting`.
* A prediction is `np.argmax(proba, axis=1)`: a tie between classes goes to the smallest label, as in
  scikit-learn.
* k-NN uses squared Euclidean distances from direct differences (`pairwise_distances(..., "squared")`), and
  among equally distant training vectors the lower index wins (`lax.top_k`), the rule of
  `classifiers.knn_from_distances`. It matches `KNeighborsClassifier(algorithm="brute")` whenever the k-th
  and (k+1)-th nearest distances differ (see `classifiers` for the tie case scikit-learn leaves to its heap).
* The MLP is scikit-learn's `MLPClassifier` on features standardised with the training split's statistics:
  the same model as `make_pipeline(StandardScaler(), MLPClassifier(...))`. Features are cast to float32
  first (the package's feature dtype; scikit-learn keeps float32 through both steps).
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from navee_jax.distances import pairwise_distances
from navee_jax.evaluate.classifiers import nearest_labels

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 7, 9, 15, 21)


@dataclasses.dataclass(frozen=True)
class FeatureClassifierResult:
    """What `mlp_fit_predict_proba` returns.

    probas: one (Q_i, num_classes) float32 matrix per query array, in the order given.
    epochs: the epochs of the returned model (with validation: the chosen epoch; without: scikit-learn's
        `n_iter_`, i.e. max_iter or fewer if its training-loss tolerance stopped it).
    val_accuracy: the returned model's validation accuracy, or None when no validation split was given.
    """

    probas: list[np.ndarray]
    epochs: int
    val_accuracy: float | None = None


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """(train, *others) standardised with the mean and population std of `train`'s columns, as float32.

    A constant column of `train` keeps scale 1 (scikit-learn's StandardScaler), so it maps to 0 instead of
    dividing by zero.
    """
    scaler = StandardScaler().fit(np.asarray(train, np.float32))
    return tuple(scaler.transform(np.asarray(x, np.float32)).astype(np.float32, copy=False)
                 for x in (train, *others))


def _check_features(name: str, x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"{name}: expected features of shape {want}, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: classifiers are undefined for them; check the extractor")
    return x


def _check_labels(name: str, y: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or (n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes)):
        found = f", range {y.min()}..{y.max()}" if y.size and np.issubdtype(y.dtype, np.integer) else ""
        raise ValueError(f"{name}: expected {n} integer labels in 0..{num_classes - 1}, got shape {y.shape}, "
                         f"dtype {y.dtype}{found}")
    return y.astype(np.int32)


@partial(jax.jit, static_argnames=("k",))
def _nearest_labels(train_x: jax.Array, train_y: jax.Array, query_x: jax.Array, k: int) -> jax.Array:
    """(Q, k) labels of each query's k nearest training vectors, nearest first (lower index first on ties)."""
    return nearest_labels(pairwise_distances(query_x, train_x, "squared"), train_y, k)


def _neighbour_labels(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int,
                      batch: int) -> np.ndarray:
    """(Q, k) int32 neighbour labels, `batch` queries per compiled call.

    The last chunk is zero-padded to `batch` rows so every chunk has one shape (one compilation). The k
    nearest in (distance, index) order are a prefix of the k' > k nearest, so one call serves every k <= k'.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    q = len(query_x)
    if q == 0:
        return np.zeros((0, k), np.int32)
    batch = min(batch, q)
    train_xj, train_yj = jnp.asarray(train_x), jnp.asarray(train_y)

    def chunk(start: int) -> jax.Array:
        rows = query_x[start:start + batch]
        if len(rows) < batch:
            rows = np.concatenate([rows, np.zeros((batch - len(rows), rows.shape[1]), rows.dtype)])
        return _nearest_labels(train_xj, train_yj, jnp.asarray(rows), k)

    parts, upcoming = [], chunk(0)
    for start in range(0, q, batch):
        current = upcoming
        if start + batch < q:  # dispatched asynchronously: computed while this chunk is copied back
            upcoming = chunk(start + batch)
        parts.append(np.asarray(current))
    return np.concatenate(parts)[:q]


def _vote_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(Q, C) float32 fraction of each row of (Q, k) labels that is each class."""
    q, k = labels.shape
    flat = (np.arange(q)[:, None] * num_classes + labels).ravel()
    counts = np.bincount(flat, minlength=q * num_classes).reshape(q, num_classes)
    return counts.astype(np.float32) / np.float32(k)


def knn_proba(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int, num_classes: int,
              batch: int = 1024) -> np.ndarray:
    """(Q, num_classes) float32 fractions of each query's k nearest training vectors that carry each label.

    Nearest is squared Euclidean, the lower training index first among equal distances; predictions are
    `argmax(axis=1)` (a class tie goes to the smallest label). Queries go `batch` at a time, so the largest
    distance matrix is batch x len(train_x) float32 (1024 x 60,000 is 250 MB). Distances come from direct
    differences, i.e. batch * N * D operations rather than a matrix multiply: exact ordering at the cost of
    speed on large, high-dimensional training sets. Needs 1 <= k <= len(train_x).
    """
    train_x = _check_features("train_x", train_x)
    train_y = _check_labels("train_y", train_y, len(train_x), num_classes)
    query_x = _check_features("query_x", query_x, train_x.shape[1])
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k must be in 1..{len(train_x)} (the training set's size), got {k}")
    return _vote_fractions(_neighbour_labels(train_x, train_y, query_x, k, batch), num_classes)


def choose_k(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, num_classes: int,
             ks: Sequence[int] = DEFAULT_KS, batch: int = 1024) -> tuple[int, dict[int, float]]:
    """(the k of highest validation accuracy, {k: validation accuracy}) over `ks`; ties go to the smallest k.

    ks larger than the training set are skipped (absent from the dict). The neighbours are found once, for
    the largest k, and every smaller k reads a prefix of them.
    """
    train_x = _check_features("train_x", train_x)
    train_y = _check_labels("train_y", train_y, len(train_x), num_classes)
    val_x = _check_features("val_x", val_x, train_x.shape[1])
    val_y = _check_labels("val_y", val_y, len(val_x), num_classes)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    usable = sorted({int(k) for k in ks if k <= len(train_x)})
    if not usable or not len(val_x):
        raise ValueError(f"choose_k: no k of {tuple(ks)} fits {len(train_x)} training vectors, or no validation "
                         f"vectors ({len(val_x)})")
    labels = _neighbour_labels(train_x, train_y, val_x, usable[-1], batch)
    accuracy = {k: float(np.mean(np.argmax(_vote_fractions(labels[:, :k], num_classes), axis=1) == val_y))
                for k in usable}
    best = max(usable, key=lambda k: (accuracy[k], -k))
    return best, accuracy


def _full_proba(clf: MLPClassifier, x: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(x), num_classes), np.float32)
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def mlp_fit_predict_proba(train_x: np.ndarray, train_y: np.ndarray, query_xs: Sequence[np.ndarray],
                          num_classes: int, hidden: tuple[int, ...] = (256, 150), seed: int = 0,
                          max_iter: int = 200,
                          val: tuple[np.ndarray, np.ndarray] | None = None) -> FeatureClassifierResult:
    """Standardise, train `MLPClassifier(hidden, relu, adam, random_state=seed)`, return each query's probas.

    The features are standardised with the training split's statistics (`standardize`); the MLP has
    scikit-learn's other defaults (alpha 1e-4, learning rate 1e-3, minibatches of min(200, N)).

    Without `val`: `fit`, i.e. up to `max_iter` epochs, stopping earlier when the training loss has not
    improved by 1e-4 for 10 epochs: exactly `make_pipeline(StandardScaler(), MLPClassifier(...))`.

    With `val = (val_x, val_y)`: the number of epochs is chosen on validation accuracy. Training runs all
    `max_iter` epochs (no training-loss stop), one `partial_fit` epoch at a time, and keeps the weights after
    the epoch with the best validation accuracy (the earliest on ties): the model that e `partial_fit` calls
    on a fresh `MLPClassifier(random_state=np.random.RandomState(seed))` give, e the chosen epoch. One
    RandomState instance draws the initial weights and then each epoch's shuffle, as in `fit`; an int seed
    would make every `partial_fit` call replay the same shuffle. The weights are not bit-identical to `fit`
    with max_iter=e, though equal in distribution: `fit` shuffles the previous epoch's order again, while
    each `partial_fit` call shuffles the original order. scikit-learn's own early stopping is not used: it
    validates on a random slice of the training set, not on the given split.
    """
    train_x = _check_features("train_x", train_x)
    train_y = _check_labels("train_y", train_y, len(train_x), num_classes)
    queries = [_check_features(f"query_xs[{i}]", q, train_x.shape[1]) for i, q in enumerate(query_xs)]
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(f"the MLP needs >= 2 labels in the training set, got {classes.tolist()}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    settings = dict(hidden_layer_sizes=tuple(hidden), activation="relu", solver="adam", max_iter=max_iter)

    if val is None:
        train_s, *query_s = standardize(train_x, *queries)
        clf = MLPClassifier(random_state=seed, **settings).fit(train_s, train_y)
        return FeatureClassifierResult([_full_proba(clf, q, num_classes) for q in query_s], int(clf.n_iter_))

    val_x = _check_features("val_x", val[0], train_x.shape[1])
    val_y = _check_labels("val_y", val[1], len(val_x), num_classes)
    if not len(val_x):
        raise ValueError("val: the validation split is empty")
    train_s, val_s, *query_s = standardize(train_x, val_x, *queries)
    clf = MLPClassifier(random_state=np.random.RandomState(seed), **settings)
    best_accuracy, best_epoch, best_weights = -1.0, 0, None
    for epoch in range(1, max_iter + 1):
        clf.partial_fit(train_s, train_y, classes=classes if epoch == 1 else None)
        accuracy = float(np.mean(clf.predict(val_s) == val_y))
        if accuracy > best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
            best_weights = copy.deepcopy((clf.coefs_, clf.intercepts_))
    clf.coefs_, clf.intercepts_ = best_weights
    return FeatureClassifierResult([_full_proba(clf, q, num_classes) for q in query_s], best_epoch, best_accuracy)
