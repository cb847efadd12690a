"""Koch et al.'s siamese verification (navee_jax.losses.verification, configs/siamese.py): the loss, its
parameters and its ranking against NumPy; retrieval and 1-NN episodes ranking by the verification score; and
a short training run that beats the untrained network at 20-way 1-shot."""

import json

import jax
import numpy as np
import pytest
from conftest import run_launch
from sklearn.metrics import average_precision_score

from navee_jax.checkpoints import Checkpoints
from navee_jax.data.episodes import EpisodeSampler
from navee_jax.errors import UserError
from navee_jax.evaluate.fewshot import few_shot_grid
from navee_jax.evaluate.retrieval import retrieval_metrics
from navee_jax.losses import verification
from navee_jax.losses.verification import (
    init_verification_head,
    verification_distance,
    verification_loss,
    verification_scores,
)
from navee_jax.recognize import Recognizer
from navee_jax.recognize.export import export_embedding


def _head(dim: int, seed: int = 0) -> dict:
    return init_verification_head(jax.random.key(seed), dim)


def _np_scores(q: np.ndarray, g: np.ndarray, head: dict) -> np.ndarray:
    """(n, m) alpha . |q_i - g_j| + b in float64."""
    alpha, bias = np.asarray(head["alpha"], np.float64), float(head["bias"])
    return np.abs(q[:, None, :].astype(np.float64) - g[None, :, :]) @ alpha + bias


def test_head_starts_as_the_papers():
    head = _head(4096)
    assert head["alpha"].shape == (4096,) and head["bias"].shape == ()  # 4096 + 1 parameters
    assert abs(float(np.std(head["alpha"])) - 0.2) < 0.01 and abs(float(np.mean(head["alpha"]))) < 0.01
    assert abs(float(head["bias"]) - 0.5) < 0.05


def test_loss_is_the_binary_cross_entropy_of_the_verification_probability():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 9, 6)).astype(np.float32)
    same = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], bool)
    head = _head(6, seed=3)
    loss, aux = verification_loss(a, b, same, head)
    s = np.diagonal(_np_scores(a, b, head))
    np.testing.assert_allclose(verification_scores(a, b, head), s, rtol=1e-5, atol=1e-6)
    p = 1.0 / (1.0 + np.exp(-s))
    expected = -np.mean(np.where(same, np.log(p), np.log(1.0 - p)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(aux["accuracy"]), np.mean((s > 0) == same), rtol=1e-6)
    np.testing.assert_allclose(float(aux["positive_probability"]), p[same].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["negative_probability"]), p[~same].mean(), rtol=1e-5)


def test_distance_is_minus_log_p_same_scored_in_blocks(monkeypatch):
    """Blocks of 3 queries (7 = 3 + 3 + 1) against 8 gallery rows give the brute-force -log p(same)."""
    monkeypatch.setattr(verification, "_BLOCK_FLOATS", 3 * 8 * 5)
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(8, 5)).astype(np.float32)
    head = _head(5, seed=2)
    d = np.asarray(verification_distance(head)(q, g))
    expected = np.logaddexp(0.0, -_np_scores(q, g, head))  # softplus(-score) = -log sigmoid(score)
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
    assert (d >= 0).all()
    assert verification_distance(head)(q[:0], g).shape == (0, 8)


def _pools(seed: int = 0):
    rng = np.random.default_rng(seed)
    support_labels, query_labels = np.repeat(np.arange(6), 4), np.repeat(np.arange(6), 3)
    centres = rng.normal(size=(6, 8))
    support = (centres[support_labels] + 0.9 * rng.normal(size=(24, 8))).astype(np.float32)
    query = (centres[query_labels] + 0.9 * rng.normal(size=(18, 8))).astype(np.float32)
    return support, support_labels, query, query_labels


def test_retrieval_ranks_by_the_verification_score():
    support, support_labels, query, query_labels = _pools()
    head = {"alpha": -np.abs(np.asarray(_head(8, seed=4)["alpha"])) * np.linspace(0.1, 3, 8).astype(np.float32),
            "bias": _head(8, seed=4)["bias"]}
    got = retrieval_metrics(query, query_labels, support, support_labels, ks=(),
                            distance=verification_distance(head))["map"]
    scores = _np_scores(query, support, head)
    expected = np.mean([average_precision_score(support_labels == y, s) for y, s in zip(query_labels, scores)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    euclidean = retrieval_metrics(query, query_labels, support, support_labels, ks=())["map"]
    assert abs(got - euclidean) > 1e-3  # the head's weighting ranks differently: it is what was used


def test_one_shot_decisions_pick_the_support_image_of_highest_score():
    support, support_labels, query, query_labels = _pools(1)
    head = _head(8, seed=5)
    cells = few_shot_grid(support, support_labels, query, query_labels, ways=(4,), shots=(1, 2), queries=3,
                          episodes=30, seed=7, distance=verification_distance(head))
    scores = _np_scores(query, support, head)
    for cell in cells:
        eps = EpisodeSampler(support_labels, query_labels).sample(4, cell.shots, 3, 30,
                                                                  np.random.default_rng([7, 4, cell.shots]))
        accuracies = []
        for s_idx, s_lab, q_idx, q_lab, mask in zip(eps.support, eps.support_labels, eps.query, eps.query_labels,
                                                     eps.query_mask):
            best = s_lab[np.argmax(scores[np.ix_(q_idx, s_idx)], axis=1)]
            accuracies.append(((best == q_lab) & mask).sum() / mask.sum())
        np.testing.assert_allclose(cell.mean, np.mean(accuracies), rtol=1e-12)


def test_siamese_network_trains_and_beats_the_untrained_one_at_20_way_1_shot(tmp_path):
    """configs/siamese.py on glyphs (Koch's CNN at 1/8 width, 65x65, 80 steps): the pair loss falls, and 20-way 1-shot
    accuracy by verification score on the 30 unseen letters clears the untrained network's, CIs apart; and the
    recognizer ranks by the same score."""
    r = run_launch(["--config=configs/siamese.py", f"--workdir={tmp_path}", "--config.model.width=8",
                    "--config.train.num_epochs=2", "--config.train.steps_per_epoch=40", "--config.optim.lr=1e-3",
                    "--config.eval.ways=20", "--config.eval.shots=(1,)", "--config.eval.episodes=60"])
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    losses = [h["loss"] for h in m["history"]]
    assert losses[-1] < losses[0], losses
    (before,), (after,) = m["initial"]["few_shot"], m["final"]["few_shot"]
    assert (before["ways"], before["shots"], after["ways"]) == (20, 1, 20)
    assert after["mean"] - after["ci95"] > before["mean"] + before["ci95"], (before, after)
    # The recognizer ranks enrolled articles by the trained head's score too: NumPy's -log p(same) argmin.
    rec = Recognizer.load(str(tmp_path))
    ckpt = Checkpoints(str(tmp_path))
    head = {k: np.asarray(v) for k, v in ckpt.restore_arrays(ckpt.resolve_step("best"))["loss_params"].items()}
    ckpt.close()
    rng = np.random.default_rng(0)
    refs, queries = rng.integers(0, 256, (12, 65, 65, 1), np.uint8), rng.integers(0, 256, (5, 65, 65, 1), np.uint8)
    rec.enroll(refs, [f"a{i % 4}" for i in range(12)])
    predictions = rec.predict(queries, k=2)
    distance = np.logaddexp(0.0, -_np_scores(rec.embed(queries), rec.embed(refs), head))  # softplus(-score)
    per_article = np.stack([distance[:, i::4].min(axis=1) for i in range(4)], axis=1)
    assert [p.article for p in predictions] == [f"a{i}" for i in per_article.argmin(axis=1)]
    np.testing.assert_allclose([p.distance for p in predictions], per_article.min(axis=1), rtol=1e-4)
    with pytest.raises(UserError, match="an exported embedding alone would rank wrongly"):
        export_embedding(rec, str(tmp_path / "export"))
