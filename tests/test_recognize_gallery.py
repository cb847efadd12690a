"""Gallery search, prototypes, incremental enrolment, calibration and save/load, on embeddings, against
scikit-learn and NumPy references (no model, no data: fast)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import NearestCentroid, NearestNeighbors

from navee_jax.errors import UserError
from navee_jax.recognize.calibrate import far_threshold, rates
from navee_jax.recognize.gallery import Gallery
from navee_jax.recognize.search import ExactIndex, faiss_available

FP = {"model": {"embed_dim": 8}, "preprocessing": {"image_size": 28}, "weights_sha256": "abc", "checkpoint": "w/1"}


def _clustered(rng, articles=12, per=4, queries=5, dim=8):
    centres = rng.normal(size=(articles, dim))
    ref_lab = np.repeat(np.arange(articles), per)
    q_lab = np.repeat(np.arange(articles), queries)
    refs = centres[ref_lab] + 0.3 * rng.normal(size=(len(ref_lab), dim))
    qs = centres[q_lab] + 0.3 * rng.normal(size=(len(q_lab), dim))
    return refs.astype(np.float32), ref_lab, qs.astype(np.float32), q_lab


# extra=0 leaves no margin: every query falls back to direct differences over the whole gallery; 500 > 203
# rows: direct differences only; 32: candidates by matrix multiply, re-ranked.
@pytest.mark.parametrize("gallery_chunk,extra", [(7, 32), (4096, 32), (7, 0), (4096, 500)])
def test_chunked_exact_top_k_equals_sklearn_brute(gallery_chunk, extra):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(203, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    d2, idx = ExactIndex(gallery, gallery_chunk).search(queries, k=5, query_chunk=8, extra=extra)
    ref_d, ref_i = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(gallery).kneighbors(queries)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(np.sqrt(d2), ref_d, rtol=1e-5, atol=1e-5)
    direct_d2, direct_idx = ExactIndex(gallery).search(queries, k=5, extra=10**6)  # all pairs by direct differences
    np.testing.assert_array_equal(idx, direct_idx)
    # Re-ranked distances are direct differences too; XLA may sum the d squares in another order for another
    # block shape, so they agree to float32 rounding (a few ulp), not always bit for bit.
    np.testing.assert_allclose(d2, direct_d2, rtol=1e-6)


def test_ties_go_to_the_earlier_gallery_row_across_chunks():
    rng = np.random.default_rng(1)
    gallery = rng.integers(0, 2, (60, 3)).astype(np.float32)  # many exact duplicates: distance ties
    queries = rng.integers(0, 2, (20, 3)).astype(np.float32)
    d2, idx = ExactIndex(gallery, gallery_chunk=9).search(queries, k=4)
    full = ((queries[:, None] - gallery[None]) ** 2).sum(-1)
    want = np.argsort(full, axis=1, kind="stable")[:, :4]  # (distance, index) order
    np.testing.assert_array_equal(idx, want)
    top1 = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(gallery).kneighbors(queries)[1][:, 0]
    np.testing.assert_array_equal(idx[:, 0], top1)  # scikit-learn keeps the first of equally near images too


def test_nn_and_prototype_search_against_references():
    rng = np.random.default_rng(2)
    refs, ref_lab, qs, _ = _clustered(rng)
    g = Gallery(8, FP)
    g.add(refs, [f"a{c}" for c in ref_lab])
    arts, dist = g.search(qs, k=3, mode="nn")
    full = np.sqrt(((qs[:, None] - refs[None]) ** 2).sum(-1))
    per_article = np.stack([full[:, ref_lab == c].min(axis=1) for c in range(12)], axis=1)
    np.testing.assert_array_equal(arts, np.argsort(per_article, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(dist, np.sort(per_article, axis=1)[:, :3], rtol=1e-5)
    arts, dist = g.search(qs, k=1, mode="prototype")
    centroid = NearestCentroid().fit(refs, ref_lab)
    np.testing.assert_array_equal(arts[:, 0], centroid.predict(qs))
    np.testing.assert_allclose(g.prototypes, centroid.centroids_, rtol=1e-5, atol=1e-6)


def test_incremental_enrolment_equals_enrolling_the_final_set_at_once(tmp_path):
    rng = np.random.default_rng(3)
    refs, ref_lab, qs, _ = _clustered(rng)
    names = [f"article{c}" for c in ref_lab]
    one_by_one = Gallery(8, FP)
    for c in range(12):
        one_by_one.add(refs[ref_lab == c], [f"article{c}"] * 4)
    one_by_one.remove(["article5"])
    keep = ref_lab != 5
    at_once = Gallery(8, FP)
    at_once.add(refs[keep], [n for n, k in zip(names, keep) if k])
    assert one_by_one.articles == at_once.articles
    np.testing.assert_array_equal(one_by_one.embeddings, at_once.embeddings)
    np.testing.assert_array_equal(one_by_one.prototypes, at_once.prototypes)
    for mode in ("nn", "prototype"):
        a1, d1 = one_by_one.search(qs, 5, mode)
        a2, d2 = at_once.search(qs, 5, mode)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(d1, d2)
        assert "article5" not in {one_by_one.articles[i] for i in a1.ravel()}
    with pytest.raises(UserError, match="not enrolled"):
        at_once.remove(["article5"])


def test_far_threshold_accepts_the_target_fraction_of_negatives():
    rng = np.random.default_rng(4)
    neg = rng.uniform(0, 2, 1000)
    for target in (0.0, 0.01, 0.05, 0.2):
        t = far_threshold(neg, target)
        assert np.mean(neg <= t) == np.floor(target * 1000) / 1000  # numpy count at the threshold
    assert far_threshold(neg, 1.0) == float("inf")
    assert far_threshold(np.array([0.5, 0.5, 0.7]), 0.4) < 0.5  # a tie cannot be split: accept neither
    r = rates(np.array([0.1, 0.9]), np.array([0.2, 0.3, 0.95]), 0.25)
    assert (r["far"], r["recall"]) == (1 / 3, 1 / 2)


def test_calibration_scores_against_brute_force_and_save_load(tmp_path):
    rng = np.random.default_rng(5)
    refs, ref_lab, qs, q_lab = _clustered(rng, articles=10)
    g = Gallery(8, FP)
    enrolled = ref_lab < 6  # articles 6..9 are unknown
    g.add(refs[enrolled], [f"a{c}" for c in ref_lab[enrolled]])
    cal = g.calibrate(qs, [f"a{c}" for c in q_lab], target_far=0.1)
    full = np.sqrt(((qs[:, None] - refs[enrolled][None]) ** 2).sum(-1))
    per_article = np.stack([full[:, ref_lab[enrolled] == c].min(axis=1) for c in range(6)], axis=1)
    own = q_lab < 6
    pos = per_article[own, q_lab[own]]
    other = np.where(np.arange(6)[None] == np.where(own, q_lab, -1)[:, None], np.inf, per_article).min(axis=1)
    t = cal["nn"]["threshold"]
    assert cal["nn"]["far"] == pytest.approx(np.mean(other <= t)) and cal["nn"]["far"] <= 0.1
    assert cal["nn"]["recall"] == pytest.approx(np.mean(pos <= t))
    assert (cal["nn"]["positives"], cal["nn"]["negatives"]) == (own.sum(), len(qs))

    g.save(str(tmp_path / "g"))
    loaded = Gallery.load(str(tmp_path / "g"))
    assert loaded.articles == g.articles and loaded.calibration == json.loads(json.dumps(cal))
    for mode in ("nn", "prototype"):
        np.testing.assert_array_equal(loaded.search(qs, 3, mode)[0], g.search(qs, 3, mode)[0])
    other_fp = {**FP, "preprocessing": {"image_size": 32}}
    with pytest.raises(UserError, match=r"preprocessing.image_size is 28 in the gallery but 32 here"):
        loaded.check_compatible(other_fp, "g")
    loaded.check_compatible({**FP, "checkpoint": "elsewhere/1"}, "g")  # same weights from a copied workdir: fine


@pytest.mark.skipif(not faiss_available(), reason="FAISS is not installed (optional: pip install -e '.[faiss]')")
def test_faiss_index_behind_the_same_api_finds_the_exact_neighbours_of_clustered_data():
    rng = np.random.default_rng(6)
    refs, ref_lab, qs, _ = _clustered(rng, articles=300, per=4, queries=1, dim=16)
    g = Gallery(16, FP)
    g.add(refs, [f"a{c}" for c in ref_lab])
    exact_arts, exact_d = g.search(qs, k=3)
    faiss_arts, faiss_d = g.search(qs, k=3, index="faiss")
    assert np.mean(faiss_arts[:, 0] == exact_arts[:, 0]) >= 0.95  # approximate: recall@1, not equality
    same = faiss_arts[:, 0] == exact_arts[:, 0]
    np.testing.assert_allclose(faiss_d[same, 0], exact_d[same, 0], rtol=1e-4, atol=1e-5)


def test_leave_one_out_calibration_against_brute_force():
    rng = np.random.default_rng(7)
    refs, ref_lab, _, _ = _clustered(rng, articles=8, per=4)
    refs, ref_lab = refs[:-3], ref_lab[:-3]  # the last article keeps one image: negatives only
    g = Gallery(8, FP)
    g.add(refs, [f"a{c}" for c in ref_lab])
    cal = g.calibrate_leave_one_out(target_far=0.2)
    d = np.sqrt(((refs[:, None] - refs[None]) ** 2).sum(-1))
    same = ref_lab[:, None] == ref_lab[None]
    np.fill_diagonal(d, np.inf)
    has_other = np.bincount(ref_lab)[ref_lab] >= 2
    pos_nn = np.where(same, d, np.inf).min(axis=1)[has_other]
    neg_nn = np.where(same, np.inf, d).min(axis=1)
    means = np.stack([refs[ref_lab == c].mean(axis=0) for c in range(8)])
    loo = np.stack([(refs[ref_lab == c].sum(0) - x) / max(np.sum(ref_lab == c) - 1, 1) for x, c in zip(refs, ref_lab)])
    pos_proto = np.linalg.norm(refs - loo, axis=1)[has_other]
    dp = np.linalg.norm(refs[:, None] - means[None], axis=-1)
    neg_proto = np.where(np.arange(8)[None] == ref_lab[:, None], np.inf, dp).min(axis=1)
    for mode, pos, neg in (("nn", pos_nn, neg_nn), ("prototype", pos_proto, neg_proto)):
        c = cal[mode]
        assert (c["positives"], c["negatives"]) == (len(pos), len(neg))
        assert c["far"] == pytest.approx(np.mean(neg <= c["threshold"])) and c["far"] <= 0.2
        assert c["recall"] == pytest.approx(np.mean(pos <= c["threshold"]))
    assert cal["source"] == "leave-one-out on the references"


def _l1(q, g):
    return jnp.sum(jnp.abs(q[:, None, :] - g[None, :, :]), axis=-1)


def test_own_distance_search_and_calibration_against_brute_force():
    """A gallery ranking by a method's own distance (here L1, as a verification head's |h1 - h2| is) gives
    NumPy's brute-force ranking, with equal distances going to the article of the earlier image (nn) or
    the earlier article (prototype), articles enrolled interleaved; its calibration scores use it too."""
    rng = np.random.default_rng(8)
    # Small integers, 4 images an article (means are exact quarters): many exact ties, exactly summed.
    refs = rng.integers(0, 3, (28, 4)).astype(np.float32)
    ref_lab = rng.permutation(np.repeat(np.arange(7), 4))
    qs = rng.integers(0, 3, (25, 4)).astype(np.float32)
    g = Gallery(4, FP, distance=jax.jit(_l1))
    g.add(refs, [f"a{c}" for c in ref_lab])
    article_of = np.array([g.articles.index(f"a{c}") for c in ref_lab])
    full = np.abs(qs[:, None] - refs[None]).sum(-1)
    per_article = np.stack([full[:, article_of == a].min(axis=1) for a in range(7)], axis=1)
    first_best = np.stack([np.where(full == per_article[:, [a]], np.arange(28), 99)[:, article_of == a].min(axis=1)
                           for a in range(7)], axis=1)
    want = np.array([sorted(range(7), key=lambda a: (per_article[i, a], first_best[i, a]))[:3] for i in range(25)])
    arts, dist = g.search(qs, k=3, mode="nn")
    np.testing.assert_array_equal(arts, want)
    np.testing.assert_allclose(dist, np.take_along_axis(per_article, want, axis=1))
    means = np.stack([refs[article_of == a].mean(axis=0) for a in range(7)])
    dp = np.abs(qs[:, None] - means[None]).sum(-1)
    arts, dist = g.search(qs, k=2, mode="prototype")
    np.testing.assert_array_equal(arts, np.argsort(dp, axis=1, kind="stable")[:, :2])
    np.testing.assert_allclose(dist, np.sort(dp, axis=1)[:, :2], rtol=1e-6)
    with pytest.raises(UserError, match="ranks by its own learned score: use index='exact'"):
        g.search(qs, index="faiss")
    positive, negative = g.match_scores(qs[:6], [g.articles[a] for a in want[:6, 1]], "nn")
    np.testing.assert_allclose(positive, per_article[np.arange(6), want[:6, 1]])
    np.testing.assert_allclose(negative, per_article[np.arange(6), want[:6, 0]])
    positive, _ = g.leave_one_out_scores("nn")
    d = np.abs(refs[:, None] - refs[None]).sum(-1)
    np.fill_diagonal(d, np.inf)
    loo = np.concatenate([np.where(article_of[None] == a, d, np.inf)[article_of == a].min(axis=1) for a in range(7)])
    np.testing.assert_allclose(np.sort(positive), np.sort(loo))
