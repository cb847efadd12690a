import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from navee_jax.evaluate.retrieval import ranking_metrics, retrieval_metrics


def grid_embeddings(rng, n, dim=6, classes=5):
    """Small integers: squared distances are exact in float32 and in the references, so ties are real ties."""
    return rng.integers(-2, 3, size=(n, dim)).astype(np.float32), rng.integers(0, classes, n)


def reference_distances(query, gallery, metric):
    q, g = query.astype(np.float64), gallery.astype(np.float64)
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - qn @ gn.T
    return ((q[:, None] - g[None]) ** 2).sum(-1)  # squared: the Euclidean order without rounding a sqrt


def brute_force(distances, relevant, ks):
    """MAP@R and Recall@K with explicit loops over a (distance, gallery index) ranking."""
    map_at_r, recall = [], {k: [] for k in ks}
    for d, rel in zip(distances, relevant):
        if not rel.any():
            continue
        ranked = [rel[j] for j in sorted(range(len(d)), key=lambda j: (d[j], j))]
        r = sum(ranked)
        hits, total = 0, 0.0
        for i in range(r):
            hits += ranked[i]
            if ranked[i]:
                total += hits / (i + 1)
        map_at_r.append(total / r)
        for k in ks:
            recall[k].append(float(any(ranked[:k])))
    return np.mean(map_at_r), {k: np.mean(v) for k, v in recall.items()}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(3))
def test_map_equals_per_query_sklearn_on_random_embeddings(seed, metric):
    rng = np.random.default_rng(seed)
    gallery, query = rng.normal(size=(60, 16)).astype(np.float32), rng.normal(size=(25, 16)).astype(np.float32)
    gallery_labels, query_labels = rng.integers(0, 5, 60), rng.integers(0, 5, 25)
    gallery_labels[:5] = np.arange(5)  # every query has a relevant gallery item
    d = reference_distances(query, gallery, metric)
    want = np.mean([average_precision_score(gallery_labels == lab, -row) for row, lab in zip(d, query_labels)])
    got = retrieval_metrics(query, query_labels, gallery, gallery_labels, metric=metric)
    assert got["queries_scored"] == 25 and got["queries_without_relevant"] == 0
    assert got["map"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "squared"])
def test_all_metrics_equal_references_with_ties(metric):
    rng = np.random.default_rng(3)
    gallery, gallery_labels = grid_embeddings(rng, 80)
    query, query_labels = grid_embeddings(rng, 30)
    query[:5] = gallery[:5]  # exact duplicates: distance 0
    query_labels[-3:] = 99  # no relevant gallery item
    ks = (1, 3, 10, 1000)
    got = retrieval_metrics(query, query_labels, gallery, gallery_labels, metric=metric, ks=ks)
    d = reference_distances(query, gallery, metric)
    relevant = query_labels[:, None] == gallery_labels[None]
    scored = relevant.any(axis=1)
    want_ap = np.mean([average_precision_score(r, -row) for row, r in zip(d[scored], relevant[scored])])
    want_map_at_r, want_recall = brute_force(d, relevant, ks)
    assert got["queries_scored"] == 27 and got["queries_without_relevant"] == 3
    assert got["map"] == pytest.approx(want_ap, abs=1e-12)
    assert got["map_at_r"] == pytest.approx(want_map_at_r, abs=1e-12)
    for k in ks:
        assert got[f"recall_at_{k}"] == pytest.approx(want_recall[k], abs=1e-12)
    assert got["recall_at_1000"] == 1.0  # K beyond the gallery: all of it


def test_ranking_metrics_on_tied_distances_float32_and_float64():
    rng = np.random.default_rng(7)
    distances = rng.integers(0, 4, size=(40, 30)).astype(np.float64)  # many ties
    relevant = rng.random((40, 30)) < 0.3
    relevant[:, 0] = True
    relevant[-1] = False
    ks = (1, 2, 5)
    got64 = ranking_metrics(distances, relevant, ks)
    got32 = ranking_metrics(distances.astype(np.float32), relevant, ks)
    for name in got64:
        np.testing.assert_array_equal(got32[name], got64[name])
    want = [average_precision_score(r, -d) for d, r in zip(distances[:-1], relevant[:-1])]
    np.testing.assert_allclose(got64["ap"][:-1], want, atol=1e-12)
    assert all(np.isnan(v[-1]) for v in got64.values())
    map_at_r, recall = brute_force(distances, relevant, ks)
    assert np.nanmean(got64["map_at_r"]) == pytest.approx(map_at_r, abs=1e-12)
    for k in ks:
        assert np.nanmean(got64[f"recall_at_{k}"]) == pytest.approx(recall[k], abs=1e-12)


def test_recall_and_map_at_r_break_ties_by_gallery_index():
    # Three gallery items at the same distance; only the last is relevant.
    distances = np.array([[1.0, 1.0, 1.0, 2.0]], np.float32)
    relevant = np.array([[False, False, True, True]])
    got = ranking_metrics(distances, relevant, ks=(1, 2, 3))
    assert [got[f"recall_at_{k}"][0] for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert got["map_at_r"][0] == 0.0  # R = 2: ranks 1 and 2 (gallery 0 and 1) are not relevant
    assert got["ap"][0] == pytest.approx((1 / 3 + 2 / 4) / 2)  # the tie block shares precision 1/3 at rank 3


def test_negative_zero_and_rounding_negatives_tie_with_zero():
    distances = np.array([[-0.0, 0.0, -1e-7, 0.5]], np.float32)
    relevant = np.array([[False, False, True, True]])
    got = ranking_metrics(distances, relevant, ks=(1, 3))
    assert got["recall_at_1"][0] == 0.0 and got["recall_at_3"][0] == 1.0  # all three at 0; index order
    assert got["ap"][0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_nan_distances_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(np.array([[0.0, np.nan]]), np.array([[True, False]]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_equals_unchunked(metric):
    rng = np.random.default_rng(5)
    gallery, gallery_labels = grid_embeddings(rng, 50)
    query, query_labels = grid_embeddings(rng, 23)
    a = retrieval_metrics(query, query_labels, gallery, gallery_labels, metric=metric, chunk=3)
    b = retrieval_metrics(query, query_labels, gallery, gallery_labels, metric=metric, chunk=10000)
    assert a == b


def test_collapsed_embedding_scores_the_base_rate():
    # All embeddings equal: every ranking is one tie block, so AP = fraction relevant (no lucky order).
    labels = np.array([0, 0, 1, 1, 1, 2])
    query, support = np.zeros((3, 4), np.float32), np.zeros((6, 4), np.float32)
    got = retrieval_metrics(query, np.array([0, 1, 2]), support, labels, ks=())["map"]
    assert got == pytest.approx(np.mean([2 / 6, 3 / 6, 1 / 6]))


def test_queries_without_a_relevant_image_are_not_scored():
    support = np.array([[0, 0], [1, 1], [2, 2]], np.float32)
    m = retrieval_metrics(np.zeros((2, 2), np.float32), np.array([0, 5]), support, np.array([0, 1, 1]), ks=())
    got, n = m["map"], m["queries_scored"]
    assert n == 1 and got == pytest.approx(1.0)  # the query without a relevant image is not scored
    nothing = retrieval_metrics(np.zeros((1, 2), np.float32), np.array([5]), support, np.array([0, 1, 1]))
    assert np.isnan(nothing["map"]) and nothing["queries_scored"] == 0


def test_bad_arguments_are_rejected():
    x, y = np.zeros((2, 2), np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match="chunk"):
        retrieval_metrics(x, y, x, y, chunk=0)
    with pytest.raises(ValueError, match="unknown metric"):
        retrieval_metrics(x, y, x, y, metric="manhattan")
