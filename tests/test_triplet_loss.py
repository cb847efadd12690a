import jax
import jax.numpy as jnp
import numpy as np
import pytest

from navee_jax.losses import batch_hard_triplet_loss, pairwise_distances, same_label_mask


def brute_force_batch_hard(emb: np.ndarray, labels: np.ndarray, margin: float, squared: bool) -> float:
    """Loop over anchors; anchors without a positive or a negative are left out of the mean."""
    terms = []
    for a in range(len(emb)):
        d = ((emb - emb[a]) ** 2).sum(1)
        d = d if squared else np.sqrt(d)
        pos = [d[p] for p in range(len(emb)) if p != a and labels[p] == labels[a]]
        neg = [d[n] for n in range(len(emb)) if labels[n] != labels[a]]
        if pos and neg:
            terms.append(max(max(pos) - min(neg) + margin, 0.0))
    return float(np.mean(terms)) if terms else 0.0


def test_pairwise_distances_match_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    want = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    np.testing.assert_allclose(pairwise_distances(jnp.asarray(x), jnp.asarray(y)), want, rtol=1e-5)
    np.testing.assert_allclose(pairwise_distances(jnp.asarray(x), jnp.asarray(y), squared=True), want**2, rtol=1e-5)
    np.testing.assert_array_equal(same_label_mask(jnp.array([0, 1, 0]), jnp.array([1, 0])),
                                  [[False, True], [True, False], [False, True]])


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_matches_brute_force(seed, squared):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(24, 8)).astype(np.float32)
    labels = rng.integers(0, 6, size=24)
    labels[0] = 99  # an anchor with no positive in the batch
    loss, aux = batch_hard_triplet_loss(jnp.asarray(emb), jnp.asarray(labels), 0.5, squared)
    np.testing.assert_allclose(loss, brute_force_batch_hard(emb, labels, 0.5, squared), rtol=1e-5)
    counts = np.bincount(labels)
    assert aux["valid_fraction"] == pytest.approx(np.mean(counts[labels] > 1))


def test_anchor_without_positive_contributes_nothing():
    # Anchor 2 is alone in its class; with it left out, the loss is that of anchors 0 and 1 only.
    emb = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.2, 0.0]])
    labels = jnp.array([0, 0, 1])
    loss, aux = batch_hard_triplet_loss(emb, labels, margin=0.1)
    # anchor 0: d(a,p)=1, d(a,n)=0.2 -> 0.9; anchor 1: d(a,p)=1, d(a,n)=0.8 -> 0.3
    assert float(loss) == pytest.approx((0.9 + 0.3) / 2, rel=1e-6)
    assert float(aux["valid_fraction"]) == pytest.approx(2 / 3)


def test_batch_with_no_valid_anchor_has_zero_loss():
    loss, aux = batch_hard_triplet_loss(jnp.eye(3), jnp.array([0, 1, 2]), margin=1.0)
    assert float(loss) == 0.0 and float(aux["valid_fraction"]) == 0.0


def test_gradient_finite_when_embeddings_coincide():
    emb = jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])  # rows 0-2 identical
    labels = jnp.array([0, 0, 1, 1])
    grad = jax.grad(lambda e: batch_hard_triplet_loss(e, labels, 0.3)[0])(emb)
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0)  # the negative at distance 0 still pushes


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(8, 3))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    f = lambda e: batch_hard_triplet_loss(e, labels, 0.7)[0]  # noqa: E731
    with jax.enable_x64():
        e = jnp.asarray(emb, dtype=jnp.float64)
        grad = np.asarray(jax.grad(f)(e))
        eps, num = 1e-6, np.zeros_like(emb)
        for i in np.ndindex(*emb.shape):
            d = np.zeros_like(emb)
            d[i] = eps
            num[i] = (f(e + d) - f(e - d)) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-6)


def test_nan_embedding_is_not_hidden_as_zero_distance():
    emb = jnp.array([[0.0, 0.0], [jnp.nan, 0.0], [1.0, 1.0]])
    d = pairwise_distances(emb, emb)
    assert np.isnan(d[0, 1]) and d[0, 0] == 0.0
    assert np.isnan(batch_hard_triplet_loss(emb, jnp.array([0, 0, 1]), 0.1)[0])
