"""voting against hand-computed cases and sklearn.ensemble.VotingClassifier."""

import numpy as np
import pytest
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from navee_jax.evaluate.voting import hard_vote, soft_vote, soft_vote_predict


def test_soft_vote_by_hand():
    members = [np.array([[1.0, 0, 0], [0, 1, 0], [0.5, 0.25, 0.25]]),
               np.array([[0, 1.0, 0], [0, 0, 1], [0.5, 0.25, 0.25]]),
               np.array([[0, 0, 1.0], [0, 0.5, 0.5], [1.0, 0, 0]])]
    mean = soft_vote(members)
    np.testing.assert_allclose(mean, [[1 / 3, 1 / 3, 1 / 3], [0, 0.5, 0.5], [2 / 3, 1 / 6, 1 / 6]])
    # row 0: three-way tie, row 1: tie between 1 and 2; both go to the smallest tied label
    np.testing.assert_array_equal(soft_vote_predict(members), [0, 1, 0])
    np.testing.assert_array_equal(soft_vote_predict(members[::-1]), [0, 1, 0])


def test_hard_vote_by_hand():
    three = [np.array([2, 2, 1, 3]), np.array([1, 2, 1, 0]), np.array([0, 1, 1, 3])]
    # row 0: three-way tie -> 0; row 1: 2 wins 2-1; row 2: unanimous; row 3: 3 wins 2-1
    np.testing.assert_array_equal(hard_vote(three, 4), [0, 2, 1, 3])
    four = [np.array([2, 0, 3]), np.array([1, 3, 3]), np.array([2, 3, 3]), np.array([1, 0, 1])]
    # row 0: 1 and 2 tie 2-2 -> 1; row 1: 0 and 3 tie -> 0; row 2: 3 wins 3-1
    np.testing.assert_array_equal(hard_vote(four, 4), [1, 0, 3])
    np.testing.assert_array_equal(hard_vote(four[::-1], 4), [1, 0, 3])
    np.testing.assert_array_equal(hard_vote([np.array([4, 4])], 5), [4, 4])  # a label no other row has


def test_bad_members_raise():
    with pytest.raises(ValueError, match="labels"):
        hard_vote([np.array([0, 3])], 3)
    with pytest.raises(ValueError, match="one length"):
        hard_vote([np.array([0, 1]), np.array([0])], 3)
    with pytest.raises(ValueError, match="one shape"):
        soft_vote([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="no members"):
        hard_vote([], 3)


def _members():
    return [("lr", LogisticRegression()), ("nb", GaussianNB()),
            ("tree", DecisionTreeClassifier(max_depth=4, random_state=0))]


def test_matches_sklearn_voting_classifier():
    rng = np.random.default_rng(0)

    def data(n):  # 4 overlapping classes in 3-D, so the members often disagree
        y = rng.integers(0, 4, n)
        return np.eye(4, 3)[y] + rng.normal(size=(n, 3)), y

    (train_x, train_y), (query_x, _) = data(100), data(150)
    fitted = [clf.fit(train_x, train_y) for _, clf in _members()]
    predictions = [clf.predict(query_x) for clf in fitted]
    probas = [clf.predict_proba(query_x) for clf in fitted]
    # The tie rule is exercised: rows where all three disagree, and where the smallest label is not member 0's.
    split = [r for r in np.stack(predictions, axis=1) if len(set(r)) == 3]
    assert split and any(r.min() != r[0] for r in split)

    hard = VotingClassifier(_members(), voting="hard").fit(train_x, train_y)
    np.testing.assert_array_equal(hard_vote(predictions, 4), hard.predict(query_x))
    soft = VotingClassifier(_members(), voting="soft").fit(train_x, train_y)
    np.testing.assert_array_equal(soft_vote(probas), soft.predict_proba(query_x))
    np.testing.assert_array_equal(soft_vote_predict(probas), soft.predict(query_x))
