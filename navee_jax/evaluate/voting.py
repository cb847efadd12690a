"""Ensembles of classifiers' outputs: soft (mean probability) and hard (majority label) voting.

The members are classifiers already run on the same N rows (e.g. `feature_classifiers`' k-NN and MLP on HOG
and on network features), so voting needs only their outputs, not the classifiers: members trained by
different code (scikit-learn, JAX) combine without a common estimator interface. Labels are integers
0..num_classes-1 and every probability matrix has a column per label.

Both rules reproduce `sklearn.ensemble.VotingClassifier` (unweighted) given the same members:

* soft: the plain mean of the (N, C) probability matrices, predicted label its argmax;
* hard: per row, the label most members predict.

A tie, in the mean probability or in the vote count, goes to the smallest label (VotingClassifier takes the
argmax of the mean, and of `np.bincount` of the votes, and argmax keeps the first maximum), so results are
deterministic and never depend on member order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def soft_vote(probas: Sequence[np.ndarray]) -> np.ndarray:
    """(N, C) mean of the members' (N, C) probability matrices."""
    if not len(probas):
        raise ValueError("soft_vote: no members")
    if not _same_shape(probas, 2):
        raise ValueError(f"soft_vote: members need (N, C) probabilities of one shape, got "
                         f"{[np.shape(p) for p in probas]}")
    return np.stack([np.asarray(p) for p in probas]).mean(axis=0)


def soft_vote_predict(probas: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) label of the highest mean probability; a tie goes to the smallest label."""
    return np.argmax(soft_vote(probas), axis=1)


def hard_vote(predictions: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(N,) label predicted by the most members; a tie goes to the smallest of the tied labels.

    `predictions` are the members' (N,) integer labels in 0..num_classes-1.
    """
    if not len(predictions):
        raise ValueError("hard_vote: no members")
    if not _same_shape(predictions, 1):
        raise ValueError(f"hard_vote: members need (N,) labels of one length, got "
                         f"{[np.shape(p) for p in predictions]}")
    votes = np.stack([np.asarray(p) for p in predictions], axis=1)  # (N, members)
    if votes.size and (not np.issubdtype(votes.dtype, np.integer) or votes.min() < 0
                       or votes.max() >= num_classes):
        raise ValueError(f"hard_vote: labels must be integers in 0..{num_classes - 1}; got dtype {votes.dtype}"
                         + (f", range {votes.min()}..{votes.max()}" if np.issubdtype(votes.dtype, np.integer)
                            else ""))
    n = len(votes)
    flat = (np.arange(n)[:, None] * num_classes + votes).ravel()
    counts = np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)
    return np.argmax(counts, axis=1)


def _same_shape(arrays: Sequence[np.ndarray], ndim: int) -> bool:
    shapes = {np.shape(a) for a in arrays}
    return len(shapes) == 1 and len(next(iter(shapes))) == ndim
