"""Every loss and miner against a brute-force float64 NumPy reference written with explicit loops.

JAX computes in float32 on float32-representable inputs; the references see the same inputs in float64.
"""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from navee_jax.losses import (
    batched_prototypical_loss,
    contrastive_batch_loss,
    contrastive_pair_loss,
    cosine_similarity,
    init_proxies,
    l2_normalize,
    mine_triplets,
    multi_similarity_loss,
    multi_similarity_mining,
    negative_mask,
    paired_distances,
    pairwise_distances,
    positive_mask,
    prototypical_loss,
    proxy_anchor_loss,
    sampled_triplet_loss,
    top_fraction_mask,
    triplet_loss,
    triplet_mask,
)

RTOL, ATOL = 1e-5, 1e-6
MINERS = ["batch_all", "batch_hard", "semi_hard", "top_fraction"]
METRICS = ["euclidean", "squared", "cosine"]


# ---------------------------------------------------------------- references (float64, explicit loops)

def np_dist(u, v, metric):
    if metric == "cosine":
        nu, nv = math.sqrt(float(u @ u)), math.sqrt(float(v @ v))
        return 1.0 - (float(u @ v) / (nu * nv) if nu > 0 and nv > 0 else 0.0)
    d2 = float(((u - v) ** 2).sum())
    return d2 if metric == "squared" else math.sqrt(d2)


def np_pdist(x, y, metric):
    return np.array([[np_dist(x[i], y[j], metric) for j in range(len(y))] for i in range(len(x))])


def np_cos_sim(u, v):
    return 1.0 - np_dist(u, v, "cosine")


def top_count(fraction, n):
    """The documented k: ceil(fraction * n), shrunk by a relative 1e-6, between 1 and n (0 for n = 0)."""
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n * (1 - 1e-6))))


def log1p_sum_exp(xs):
    """log(1 + sum exp(x)) over a Python list, stably."""
    m = max([0.0, *xs])
    return m + math.log(math.exp(-m) + sum(math.exp(x - m) for x in xs))


def ref_contrastive(pairs, margin, p_mining):
    """pairs: list of (d, same). Mean of the k largest per-pair losses."""
    losses = sorted((0.5 * d * d if same else 0.5 * max(margin - d, 0.0) ** 2 for d, same in pairs), reverse=True)
    k = top_count(p_mining, len(losses))
    return sum(losses[:k]) / k if k else 0.0


def ref_contrastive_batch(emb, labels, margin, p_mining):
    n = len(emb)
    pairs = [(np_dist(emb[i], emb[j], "euclidean"), labels[i] == labels[j]) for i in range(n) for j in range(i + 1, n)]
    return ref_contrastive(pairs, margin, p_mining)


def valid_triplets(labels):
    n = len(labels)
    return [(a, p, q) for a in range(n) for p in range(n) for q in range(n)
            if p != a and labels[p] == labels[a] and labels[q] != labels[a]]


def ref_mined(d, labels, miner, margin, top_fraction):
    """The set of (a, p, n) that `miner` selects, by the rules in navee_jax.losses.triplet."""
    n = len(labels)
    if miner == "batch_all":
        return {t for t in valid_triplets(labels) if d[t[0], t[1]] - d[t[0], t[2]] + margin > 0}
    if miner == "top_fraction":
        ranked = sorted(valid_triplets(labels), key=lambda t: -(d[t[0], t[1]] - d[t[0], t[2]]))  # stable
        return set(ranked[:top_count(top_fraction, len(ranked))])
    chosen = set()
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        farthest_neg = max(neg, key=lambda q: d[a, q])  # max/min return the first (lowest) index on ties
        if miner == "batch_hard":
            chosen.add((a, max(pos, key=lambda p: d[a, p]), min(neg, key=lambda q: d[a, q])))
        else:  # semi_hard
            for p in pos:
                farther = [q for q in neg if d[a, q] > d[a, p]]
                chosen.add((a, p, min(farther, key=lambda q: d[a, q]) if farther else farthest_neg))
    return chosen


def ref_triplet(emb, labels, margin, miner, metric, top_fraction=1.0):
    d = np_pdist(emb, emb, metric)
    chosen = ref_mined(d, labels, miner, margin, top_fraction)
    terms = [max(d[a, p] - d[a, q] + margin, 0.0) for a, p, q in chosen]
    return sum(terms) / len(terms) if terms else 0.0


def ref_prototypical(support, s_labels, query, q_labels, num_classes, metric):
    """Returns (loss, accuracy) with the documented edge-case rules."""
    protos = {}
    for c in range(num_classes):
        members = [support[i] for i in range(len(support)) if s_labels[i] == c]
        if members:
            protos[c] = sum(members) / len(members)
    nll, correct = [], []
    for q in range(len(query)):
        y = q_labels[q]
        if y not in protos:
            continue
        logits = {c: -np_dist(query[q], protos[c], metric) for c in protos}
        m = max(logits.values())
        lse = m + math.log(sum(math.exp(v - m) for v in logits.values()))
        nll.append(lse - logits[y])
        correct.append(max(sorted(logits), key=lambda c: logits[c]) == y)
    return (sum(nll) / len(nll), sum(correct) / len(correct)) if nll else (0.0, 0.0)


def ref_ms_mining(s, labels, epsilon):
    n = len(labels)
    keep_pos, keep_neg = set(), set()
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        min_pos, max_neg = min(s[a, p] for p in pos), max(s[a, q] for q in neg)
        keep_pos |= {(a, p) for p in pos if s[a, p] < max_neg + epsilon}
        keep_neg |= {(a, q) for q in neg if s[a, q] > min_pos - epsilon}
    return keep_pos, keep_neg


def ref_multi_similarity(emb, labels, alpha, beta, base, epsilon):
    n = len(emb)
    s = np.array([[np_cos_sim(emb[i], emb[j]) for j in range(n)] for i in range(n)])
    keep_pos, keep_neg = ref_ms_mining(s, labels, epsilon)
    per_anchor = []
    for a in range(n):
        has_pos = any(p != a and labels[p] == labels[a] for p in range(n))
        has_neg = any(labels[q] != labels[a] for q in range(n))
        if not (has_pos and has_neg):
            continue
        pos_term = log1p_sum_exp([-alpha * (s[a, p] - base) for p in range(n) if (a, p) in keep_pos]) / alpha
        neg_term = log1p_sum_exp([beta * (s[a, q] - base) for q in range(n) if (a, q) in keep_neg]) / beta
        per_anchor.append(pos_term + neg_term)
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def ref_proxy_anchor(emb, labels, proxies, alpha, delta):
    num_classes = len(proxies)
    pos_terms, neg_total = [], 0.0
    for c in range(num_classes):
        sims = [np_cos_sim(emb[i], proxies[c]) for i in range(len(emb))]
        pos = [sims[i] for i in range(len(emb)) if labels[i] == c]
        neg = [sims[i] for i in range(len(emb)) if labels[i] != c]
        if pos:
            pos_terms.append(log1p_sum_exp([-alpha * (s - delta) for s in pos]))
        neg_total += log1p_sum_exp([alpha * (s + delta) for s in neg])
    return (sum(pos_terms) / len(pos_terms) if pos_terms else 0.0) + neg_total / num_classes


# ---------------------------------------------------------------- data

def f32(x):
    return np.array(x, dtype=np.float32)


def make_case(name, seed=0):
    """(embeddings float32 (8, 4), labels) for the random batch and the edge cases (one shape: one compile)."""
    rng = np.random.default_rng(seed)
    emb = f32(rng.normal(size=(8, 4)))
    if name == "random":  # three classes of varying size plus a singleton (label 9)
        return emb, np.array([0, 0, 0, 1, 1, 2, 2, 9])
    if name == "single_class":
        return emb, np.zeros(8, dtype=int)
    if name == "singletons":  # every class has one sample: no positive anywhere
        return emb, np.arange(8)
    if name == "duplicates":  # rows 0-2 identical (two classes), rows 4 and 5 identical (same class)
        emb[1] = emb[2] = emb[0]
        emb[5] = emb[4]
        return emb, np.array([0, 0, 1, 1, 2, 2, 0, 1])
    raise KeyError(name)


CASES = ["random", "single_class", "singletons", "duplicates"]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _value_and_grad(loss_fn, argnums, static, args, kwargs):
    return jax.value_and_grad(lambda *a: loss_fn(*a, **kwargs, **dict(static))[0], argnums=argnums)(*args)


def value_and_grad(loss_fn, *args, argnums=0, static=None, **kwargs):
    """Jitted (loss, grads w.r.t. args[argnums]) of loss_fn(*args, **kwargs, **static).

    Everything but `static` is traced, so one compilation serves every case of a shape (keeps the 2-core
    CI machine fast); static holds the arguments that select code (miner, metric, num_classes).
    """
    return _value_and_grad(loss_fn, argnums, tuple(sorted((static or {}).items())), args, kwargs)


def assert_finite(tree):
    for g in jax.tree.leaves(tree):
        assert np.all(np.isfinite(np.asarray(g))), g


mine = jax.jit(mine_triplets, static_argnames=("miner",))


# ---------------------------------------------------------------- distances and masks

@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_and_paired_distances_match_loops(metric):
    rng = np.random.default_rng(1)
    x, y = f32(rng.normal(size=(5, 3))), f32(rng.normal(size=(4, 3)))
    x[2] = 0.0  # a zero vector: cosine distance 1 to everything
    np.testing.assert_allclose(pairwise_distances(x, y, metric), np_pdist(x, y, metric), rtol=RTOL, atol=ATOL)
    want = [np_dist(x[i], y[i], metric) for i in range(4)]
    np.testing.assert_allclose(paired_distances(x[:4], y, metric), want, rtol=RTOL, atol=ATOL)
    if metric == "cosine":
        np.testing.assert_allclose(pairwise_distances(x, y, metric)[2], 1.0)
        np.testing.assert_allclose(cosine_similarity(x, y), 1.0 - np_pdist(x, y, "cosine"), rtol=RTOL, atol=ATOL)


def _distance_sums(x, metric):
    return jnp.sum(pairwise_distances(x, x, metric)) + jnp.sum(paired_distances(x, x[::-1], metric)), {}


@pytest.mark.parametrize("metric", METRICS)
def test_distance_gradients_finite_at_zero_distance_and_zero_vector(metric):
    x = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])  # a duplicate and a zero vector
    assert_finite(value_and_grad(_distance_sums, x, static={"metric": metric}))
    nan = x.at[0, 0].set(jnp.nan)
    assert np.isnan(pairwise_distances(nan, nan, metric)[0, 1])
    assert np.isnan(l2_normalize(nan)[0]).all()


def test_masks_match_loops():
    labels = np.array([0, 1, 0, 2, 1])
    pos, neg, trip = positive_mask(jnp.asarray(labels)), negative_mask(jnp.asarray(labels)), triplet_mask(labels)
    for i in range(5):
        for j in range(5):
            assert pos[i, j] == (i != j and labels[i] == labels[j])
            assert neg[i, j] == (labels[i] != labels[j])
    assert set(map(tuple, np.argwhere(trip).tolist())) == set(valid_triplets(labels))


def test_top_fraction_mask_count_and_order():
    scores = jnp.array([0.5, 3.0, -1.0, 3.0, 2.0, 9.0, 0.0, 1.0, 4.0, 7.0])
    valid = jnp.array([True] * 9 + [False])  # the invalid 7.0 is never chosen
    top = jax.jit(top_fraction_mask)
    # 0.3 * 9 = 2.7 -> k = 3: 9.0 (index 5), 4.0 (index 8), and 3.0 at index 1 before the tied index 3.
    selected, k = top(scores, valid, 0.3)
    assert int(k) == 3 and set(np.flatnonzero(selected)) == {5, 8, 1}
    # 0.3 * 10 is 3 up to float rounding: k must be 3, not 4.
    selected, k = top(jnp.arange(10.0), jnp.ones(10, bool), 0.3)
    assert int(k) == 3 and set(np.flatnonzero(selected)) == {9, 8, 7}
    # at least one when anything is valid, none when nothing is
    assert int(top(scores, valid, 0.01)[1]) == 1
    assert int(top(scores, jnp.zeros(10, bool), 0.5)[1]) == 0
    # a NaN score ranks first
    selected, _ = top(scores.at[2].set(jnp.nan), valid, 0.01)
    assert set(np.flatnonzero(selected)) == {2}
    with pytest.raises(ValueError):
        top_fraction_mask(scores, valid, 0.0)


# ---------------------------------------------------------------- contrastive

def test_contrastive_hand_computed():
    # (0,0) and (3,4) share label 0 (d = 5); (0,1) has label 1: d = 1 to the first, sqrt(18) = 4.24 to the second.
    emb = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    labels = jnp.array([0, 0, 1])
    # per pair, margin 2: positive 5^2 / 2 = 12.5; negative (2 - 1)^2 / 2 = 0.5; negative sqrt(18) > 2: 0.
    for p_mining, want in [(1.0, 13.0 / 3), (0.5, 13.0 / 2), (0.1, 12.5)]:  # k = 3, ceil(1.5) = 2, ceil(0.3) = 1
        loss, _ = value_and_grad(contrastive_batch_loss, emb, labels, 2.0, p_mining)
        assert float(loss) == pytest.approx(want, rel=1e-6)
    loss, aux = contrastive_pair_loss(emb[jnp.array([0, 0, 1])], emb[jnp.array([1, 2, 2])],
                                      jnp.array([True, False, False]), 2.0)
    assert float(loss) == pytest.approx(13.0 / 3, rel=1e-6)
    assert float(aux["active_fraction"]) == pytest.approx(2 / 3)
    assert float(aux["positive_distance"]) == pytest.approx(5.0)
    assert float(aux["negative_distance"]) == pytest.approx((1.0 + math.sqrt(18)) / 2)


@pytest.mark.parametrize("p_mining", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("case", CASES)
def test_contrastive_batch_matches_reference(case, p_mining):
    emb, labels = make_case(case)
    loss, grad = value_and_grad(contrastive_batch_loss, emb, labels, 1.5, p_mining)
    np.testing.assert_allclose(loss, ref_contrastive_batch(emb.astype(np.float64), labels, 1.5, p_mining),
                               rtol=RTOL, atol=ATOL)
    assert_finite(grad)


@pytest.mark.parametrize("p_mining", [1.0, 0.4])
def test_contrastive_pairs_match_reference(p_mining):
    rng = np.random.default_rng(5)
    a, b = f32(rng.normal(size=(10, 4))), f32(rng.normal(size=(10, 4)) * 0.5)
    b[3] = a[3]  # a duplicated negative pair and a duplicated positive pair
    b[4] = a[4]
    same = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
    pairs = [(np_dist(a[i].astype(np.float64), b[i].astype(np.float64), "euclidean"), same[i]) for i in range(10)]
    loss, grads = value_and_grad(contrastive_pair_loss, a, b, same, 1.0, p_mining, argnums=(0, 1))
    np.testing.assert_allclose(loss, ref_contrastive(pairs, 1.0, p_mining), rtol=RTOL, atol=ATOL)
    assert_finite(grads)


def test_contrastive_batch_of_one_is_zero():
    loss, aux = contrastive_batch_loss(jnp.ones((1, 3)), jnp.array([0]), 1.0, 0.5)
    assert float(loss) == 0.0 and float(aux["num_pairs"]) == 0.0


# ---------------------------------------------------------------- triplet

HAND_1D = (f32([[0.0], [1.0], [3.0], [0.5], [4.0]]), np.array([0, 0, 0, 1, 1]))


def mined_set(mask):
    return set(map(tuple, np.argwhere(np.asarray(mask)).tolist()))


def test_batch_hard_miner_hand_built():
    # 1-D points 0, 1, 3 (label 0) and 0.5, 4 (label 1). Per anchor, farthest positive / nearest negative:
    # a=0: p=2 (d 3), n=3 (d 0.5); a=1: p=2 (2), n=3 (0.5); a=2: p=0 (3), n=4 (1);
    # a=3: p=4 (3.5), n=0 (0.5, tied with index 1: lowest index wins); a=4: p=3 (3.5), n=2 (1).
    emb, labels = HAND_1D
    got = mined_set(mine(pairwise_distances(emb, emb), labels, miner="batch_hard"))
    assert got == {(0, 2, 3), (1, 2, 3), (2, 0, 4), (3, 4, 0), (4, 3, 2)}
    # margin 0.2: 3-0.5+0.2=2.7, 2-0.5+0.2=1.7, 3-1+0.2=2.2, 3.5-0.5+0.2=3.2, 3.5-1+0.2=2.7 -> 12.5 / 5
    loss, aux = triplet_loss(emb, labels, 0.2, "batch_hard")
    assert float(loss) == pytest.approx(2.5, rel=1e-6) and float(aux["num_triplets"]) == 5


def test_semi_hard_miner_hand_built():
    # Same points. Per positive pair (a, p): nearest negative with d(a, n) > d(a, p), else the farthest negative.
    # (0,1) d 1: negatives 3 (0.5), 4 (4) -> 4      (0,2) d 3: -> 4 (4)
    # (1,0) d 1: negatives 3 (0.5), 4 (3) -> 4      (1,2) d 2: -> 4 (3)
    # (2,0) d 3: negatives 3 (2.5), 4 (1): none farther -> farthest 3
    # (2,1) d 2: -> 3 (2.5), although 4 (d 1) is the hardest negative
    # (3,4) d 3.5: negatives 0, 1 (0.5), 2 (2.5): none farther -> 2      (4,3) d 3.5: 0 (4) is the only one farther
    emb, labels = HAND_1D
    got = mined_set(mine(pairwise_distances(emb, emb), labels, miner="semi_hard"))
    assert got == {(0, 1, 4), (0, 2, 4), (1, 0, 4), (1, 2, 4), (2, 0, 3), (2, 1, 3), (3, 4, 2), (4, 3, 0)}
    # margin 0.2: only (2,0,3): 3-2.5+0.2 = 0.7 and (3,4,2): 3.5-2.5+0.2 = 1.2 are positive -> 1.9 / 8
    loss, aux = triplet_loss(emb, labels, 0.2, "semi_hard")
    assert float(loss) == pytest.approx(1.9 / 8, rel=1e-6)
    assert float(aux["active_fraction"]) == pytest.approx(2 / 8)


def test_batch_all_and_top_fraction_miners_hand_built():
    # Same points, margin 0.2: 18 valid triplets (3 anchors x 2 positives x 2 negatives + 2 x 1 x 3).
    # Active ones with their losses d_ap - d_an + 0.2:
    active = {(0, 1, 3): 0.7, (0, 2, 3): 2.7, (1, 0, 3): 0.7, (1, 2, 3): 1.7, (2, 0, 3): 0.7, (2, 0, 4): 2.2,
              (2, 1, 4): 1.2, (3, 4, 0): 3.2, (3, 4, 1): 3.2, (3, 4, 2): 1.2, (4, 3, 1): 0.7, (4, 3, 2): 2.7}
    emb, labels = HAND_1D
    d = pairwise_distances(emb, emb)
    assert mined_set(mine(d, labels, miner="batch_all", margin=0.2)) == set(active)
    loss, aux = triplet_loss(emb, labels, 0.2, "batch_all")
    assert float(loss) == pytest.approx(20.9 / 12, rel=1e-6)  # sum of the 12 losses above / 12
    assert float(aux["active_fraction"]) == pytest.approx(12 / 18)
    # top 25%: k = ceil(0.25 * 18) = 5: the two 3.2s, the two 2.7s and 2.2 -> 14 / 5
    top = {(3, 4, 0), (3, 4, 1), (0, 2, 3), (4, 3, 2), (2, 0, 4)}
    assert mined_set(mine(d, labels, miner="top_fraction", margin=0.2, top_fraction=0.25)) == top
    assert float(triplet_loss(emb, labels, 0.2, "top_fraction", top_fraction=0.25)[0]) == pytest.approx(2.8, rel=1e-6)


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("case", CASES)
def test_miners_match_reference(case, miner):
    emb, labels = make_case(case)
    got = mined_set(mine(pairwise_distances(emb, emb), labels, miner=miner, margin=0.3, top_fraction=0.3))
    e64 = emb.astype(np.float64)
    assert got == ref_mined(np_pdist(e64, e64, "euclidean"), labels, miner, 0.3, 0.3)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("miner", MINERS)
def test_triplet_loss_matches_reference_random(miner, metric):
    emb, labels = make_case("random", seed=3)
    margin = 0.2 if metric == "cosine" else 1.0
    loss, grad = value_and_grad(triplet_loss, emb, labels, margin, top_fraction=0.3,
                                static={"miner": miner, "metric": metric})
    want = ref_triplet(emb.astype(np.float64), labels, margin, miner, metric, 0.3)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    assert want > 0
    assert_finite(grad)


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("case", ["single_class", "singletons", "duplicates"])
def test_triplet_loss_edge_cases(case, miner):
    emb, labels = make_case(case)
    loss, grad = value_and_grad(triplet_loss, emb, labels, 0.5, top_fraction=0.5,
                                static={"miner": miner, "metric": "euclidean"})
    want = ref_triplet(emb.astype(np.float64), labels, 0.5, miner, "euclidean", 0.5)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    assert_finite(grad)
    if case != "duplicates":
        assert want == 0.0  # no valid triplet at all
    else:
        assert np.any(np.asarray(grad) != 0)


@pytest.mark.parametrize("metric", METRICS)
def test_sampled_triplet_loss_matches_reference(metric):
    rng = np.random.default_rng(6)
    a, p, n = (f32(rng.normal(size=(9, 4))) for _ in range(3))
    p[0] = a[0]  # a duplicated anchor/positive
    n[1] = a[1]  # and a duplicated anchor/negative
    margin = 0.3
    a64, p64, n64 = (x.astype(np.float64) for x in (a, p, n))
    want = np.mean([max(np_dist(a64[i], p64[i], metric) - np_dist(a64[i], n64[i], metric) + margin, 0.0)
                    for i in range(9)])
    loss, grads = value_and_grad(sampled_triplet_loss, a, p, n, margin, argnums=(0, 1, 2), static={"metric": metric})
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    assert_finite(grads)


# ---------------------------------------------------------------- prototypical

def test_prototypical_hand_computed():
    # 1-D support: class 0 at {0, 2} -> prototype 1; class 1 at {5} -> prototype 5. Squared distances:
    # query 2 (label 0): 1 and 9 -> -log softmax = log(1 + e^-8), correct;
    # query 4 (label 0): 9 and 1 -> 8 + log(1 + e^-8), wrong.
    support, s_labels = jnp.array([[0.0], [2.0], [5.0]]), jnp.array([0, 0, 1])
    loss, aux = prototypical_loss(support, s_labels, jnp.array([[2.0], [4.0]]), jnp.array([0, 0]), 2)
    assert float(loss) == pytest.approx(4 + math.log1p(math.exp(-8)), rel=1e-6)
    assert float(aux["accuracy"]) == 0.5


def episode(seed, num_classes=4, shots=3, queries=2, dim=4):
    rng = np.random.default_rng(seed)
    s_labels = np.repeat(np.arange(num_classes), shots)
    q_labels = np.repeat(np.arange(num_classes), queries)
    centres = rng.normal(size=(num_classes, dim))
    support = f32(centres[s_labels] + rng.normal(size=(len(s_labels), dim)))
    query = f32(centres[q_labels] + rng.normal(size=(len(q_labels), dim)))
    return support, s_labels, query, q_labels


def proto_case(name):
    """12 support and 8 query samples of 4 classes, with the edge cases named."""
    support, s_labels, query, q_labels = episode(7)
    if name == "missing_class":  # class 3 has no support; a padded support (-1) and a padded query (-1)
        s_labels = np.where(s_labels == 3, -1, s_labels)
        q_labels[0] = -1
    elif name == "single_class":  # loss 0, accuracy 1
        s_labels, q_labels = np.zeros_like(s_labels), np.zeros_like(q_labels)
    elif name == "one_shot":  # one support sample per class, classes 4..11 without query
        s_labels = np.arange(12)
        q_labels = np.array([0, 1, 2, 3, 3, 2, 1, 0])
    elif name == "duplicates":  # identical support samples, a query sitting on a prototype
        support[1] = support[0]
        support[2] = support[0]
        query[0] = support[0]
    elif name == "no_support":  # every support sample is padding: no prototype, no valid query, loss 0
        s_labels = np.full_like(s_labels, -1)
    return support, s_labels, query, q_labels


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", ["random", "missing_class", "single_class", "one_shot", "duplicates", "no_support"])
def test_prototypical_matches_reference(case, metric):
    support, s_labels, query, q_labels = proto_case(case)
    loss, grads = value_and_grad(prototypical_loss, support, s_labels, query, q_labels, argnums=(0, 2),
                                 static={"num_classes": 12, "metric": metric})
    _, aux = prototypical_loss(support, s_labels, query, q_labels, 12, metric)
    want_loss, want_acc = ref_prototypical(support.astype(np.float64), s_labels, query.astype(np.float64), q_labels,
                                           12, metric)
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL, atol=ATOL)
    assert float(aux["accuracy"]) == pytest.approx(want_acc)
    assert_finite(grads)
    if case in ("single_class", "no_support"):
        assert want_loss == 0.0


@pytest.mark.parametrize("ways,shots", [(60, 1)])  # ProtoNet's Omniglot episodes
def test_prototypical_gradient_of_many_way_episodes_compiles_and_matches_reference(ways, shots):
    """With 20 or more ways the old one-hot matrix product's gradient, under the train step's XLA:CPU options,
    became a YNNPACK fusion that crashed the process (jax-ml/jax#39257): run in a subprocess, so that a
    regression fails this test instead of killing the suite."""
    code = f"""
import jax, numpy as np
from navee_jax.backend import CPU_COMPILER_OPTIONS
from navee_jax.losses import prototypical_loss
rng = np.random.default_rng(0)
e = rng.normal(size=({ways} * {shots + 5}, 256)).astype(np.float32)
s, q = np.repeat(np.arange({ways}), {shots}), np.repeat(np.arange({ways}), 5)
n = {ways} * {shots}
f = jax.jit(jax.value_and_grad(lambda e: prototypical_loss(e[:n], s, e[n:], q, {ways})[0]),
            compiler_options=CPU_COMPILER_OPTIONS)
loss, grad = f(e)
print(float(loss), float(np.abs(grad).sum()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    loss, grad_sum = map(float, r.stdout.split())
    rng = np.random.default_rng(0)
    e = rng.normal(size=(ways * (shots + 5), 256)).astype(np.float32).astype(np.float64)
    n = ways * shots
    want, _ = ref_prototypical(e[:n], np.repeat(np.arange(ways), shots), e[n:], np.repeat(np.arange(ways), 5),
                               ways, "squared")
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    assert np.isfinite(grad_sum) and grad_sum > 0


def test_batched_prototypical_is_mean_over_episodes():
    eps = [episode(s) for s in range(3)]
    stacked = [np.stack([e[i] for e in eps]) for i in range(4)]
    loss, aux = batched_prototypical_loss(*stacked, 4)
    refs = [ref_prototypical(e[0].astype(np.float64), e[1], e[2].astype(np.float64), e[3], 4, "squared") for e in eps]
    np.testing.assert_allclose(loss, np.mean([r[0] for r in refs]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["accuracy"], np.mean([r[1] for r in refs]), rtol=RTOL)


# ---------------------------------------------------------------- multi-similarity

def test_multi_similarity_mining_hand_built():
    # Unit vectors: 0 (1,0), 1 (.8,.6), 2 (0,1) of label 0; 3 (.6,.8), 4 (-1,0) of label 1. Similarities:
    # S01 .8, S02 0, S03 .6, S04 -1, S12 .6, S13 .96, S14 -.8, S23 .8, S24 0, S34 -.6.
    # a=0: min_pos 0, max_neg .6 -> negatives with S > -.1: {3}; positives with S < .7: {2}
    # a=1: min_pos .6, max_neg .96 -> negatives S > .5: {3}; positives S < 1.06: {0, 2}
    # a=2: min_pos 0, max_neg .8 -> negatives S > -.1: {3, 4}; positives S < .9: {0, 1}
    # a=3: min_pos -.6, max_neg .96 -> negatives S > -.7: {0, 1, 2}; positive {4}
    # a=4: min_pos -.6, max_neg 0 -> negatives S > -.7: {2}; positive S < .1: {3}
    emb = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = jnp.array([0, 0, 0, 1, 1])
    keep_pos, keep_neg = multi_similarity_mining(cosine_similarity(emb, emb), labels, 0.1)
    assert mined_set(keep_pos) == {(0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)}
    assert mined_set(keep_neg) == {(0, 3), (1, 3), (2, 3), (2, 4), (3, 0), (3, 1), (3, 2), (4, 2)}


@pytest.mark.parametrize("params", [(2.0, 50.0, 0.5, 0.1), (2.0, 40.0, 1.0, 0.3)])
@pytest.mark.parametrize("case", CASES)
def test_multi_similarity_matches_reference(case, params):
    emb, labels = make_case(case)
    e64 = emb.astype(np.float64)
    s = np.array([[np_cos_sim(e64[i], e64[j]) for j in range(len(e64))] for i in range(len(e64))])
    keep_pos, keep_neg = jax.jit(multi_similarity_mining)(cosine_similarity(emb, emb), labels, params[3])
    want_pos, want_neg = ref_ms_mining(s, labels, params[3])
    assert mined_set(keep_pos) == want_pos and mined_set(keep_neg) == want_neg
    loss, grad = value_and_grad(multi_similarity_loss, emb, labels, *params)
    np.testing.assert_allclose(loss, ref_multi_similarity(e64, labels, *params), rtol=RTOL, atol=ATOL)
    assert_finite(grad)


# ---------------------------------------------------------------- proxy anchor

def test_proxy_anchor_hand_computed():
    # proxies (1,0), (0,1); x0 = (1,0) of class 0, x1 = (0,2) of class 1: s(x, own proxy) = 1, s(x, other) = 0.
    # positive terms: log(1 + e^{-32 (1 - 0.1)}) each, mean over both proxies;
    # negative terms: log(1 + e^{32 (0 + 0.1)}) each, mean over both proxies.
    loss, aux = proxy_anchor_loss(jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0, 1]), jnp.eye(2))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-28.8)) + math.log1p(math.exp(3.2)), rel=1e-6)
    assert float(aux["positive_proxy_fraction"]) == 1.0


@pytest.mark.parametrize("params", [(32.0, 0.1), (16.0, 0.2)])
@pytest.mark.parametrize("case", CASES)
def test_proxy_anchor_matches_reference(case, params):
    emb, labels = make_case(case)
    proxies = f32(init_proxies(jax.random.key(0), 10, emb.shape[1]))  # proxies without samples in every case
    if case == "duplicates":
        proxies[1] = emb[0]  # a proxy equal to embeddings
    loss, grads = value_and_grad(proxy_anchor_loss, emb, labels, proxies, *params, argnums=(0, 2))
    want = ref_proxy_anchor(emb.astype(np.float64), labels, proxies.astype(np.float64), *params)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    assert_finite(grads)


def test_init_proxies_scale():
    p = init_proxies(jax.random.key(1), 200, 64)
    assert p.shape == (200, 64) and p.dtype == jnp.float32
    assert float(jnp.std(p)) == pytest.approx(math.sqrt(2 / 200), rel=0.05)


# ---------------------------------------------------------------- gradients and NaN, all losses

def _loss_on_batch(e, labels, proxies, *, name):
    """Each loss as a function of one (12, 4) batch e (labels (12,) in 0..9), for the gradient and NaN checks."""
    if name == "contrastive_batch":
        return contrastive_batch_loss(e, labels, 1.5, 0.5)
    if name == "contrastive_pair":
        return contrastive_pair_loss(e[:6], e[6:], labels[:6] == labels[6:], 1.5, 0.5)
    if name == "sampled_triplet":
        return sampled_triplet_loss(e[:4], e[4:8], e[8:], 2.0)
    if name == "prototypical":
        return prototypical_loss(e[:6], labels[:6] % 3, e[6:], labels[6:] % 3, 3)
    if name == "multi_similarity":
        return multi_similarity_loss(e, labels)
    if name == "proxy_anchor":
        return proxy_anchor_loss(e, labels, proxies)
    return triplet_loss(e, labels, 1.0, name.removeprefix("triplet_"), top_fraction=0.3)


LOSS_NAMES = ["contrastive_batch", "contrastive_pair", "sampled_triplet", "prototypical", "multi_similarity",
              "proxy_anchor"] + [f"triplet_{m}" for m in MINERS]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradient_matches_finite_differences_and_nan_propagates(name):
    """float64: jax.grad . v equals the central difference along a random v; a NaN embedding gives a NaN loss."""
    rng = np.random.default_rng(11)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 0, 9])
    with jax.enable_x64():
        e = jnp.asarray(rng.normal(size=(12, 4)))
        proxies = jnp.asarray(rng.normal(size=(10, 4)))
        v = jnp.asarray(rng.normal(size=(12, 4)))
        loss, grad = value_and_grad(_loss_on_batch, e, labels, proxies, static={"name": name})
        assert e.dtype == grad.dtype == jnp.float64 and float(loss) > 0
        h = 1e-6
        plus, _ = value_and_grad(_loss_on_batch, e + h * v, labels, proxies, static={"name": name})
        minus, _ = value_and_grad(_loss_on_batch, e - h * v, labels, proxies, static={"name": name})
        np.testing.assert_allclose(float(jnp.sum(grad * v)), (float(plus) - float(minus)) / (2 * h), rtol=1e-5,
                                   atol=1e-8)
        # sample 1 has label 0 with positives, and sits in a pair / the support of class 0 / an anchor row
        nan_loss, _ = value_and_grad(_loss_on_batch, e.at[1, 0].set(jnp.nan), labels, proxies, static={"name": name})
        assert np.isnan(float(nan_loss))
