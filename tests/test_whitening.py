"""model.whiten: the fit against scikit-learn's PCA whitening and the eigen-decomposition of the covariance; the
module as the identity in the train step and the fitted map in evaluation; a short training run whose checkpoint
holds the whitening of its own training sample, as the Recognizer applies it."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.decomposition import PCA

from configs import triplet
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.embed import image_normalizer, make_embed_fn
from navee_jax.launcher.train import prepare_data, train_and_evaluate
from navee_jax.models import build_model
from navee_jax.models.whitening import fit_whitening, with_whitening
from navee_jax.recognize.api import Recognizer
from navee_jax.sharding import make_mesh, replicated, shard_batch
from navee_jax.train.step import init_train_state, make_train_step
from navee_jax.train.whitening import whitening_sample


def _features(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)  # correlated, off-centre


def _pairwise(x):
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_full_whitening_ranks_as_sklearn_pca_whitening():
    x = _features()
    mean, projection = fit_whitening(x, power=1.0)
    ours = _unit((x - mean) @ projection)
    theirs = _unit(PCA(whiten=True).fit(x).transform(x))  # differs by a scale and signs of axes only
    np.testing.assert_allclose(_pairwise(ours), _pairwise(theirs), atol=1e-4)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_whitened_covariance_is_eigenvalues_to_one_minus_power(power):
    x = _features()
    mean, projection = fit_whitening(x, power)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    w = (x - mean) @ projection.astype(np.float64)
    # The axes are the principal directions: uncorrelated, variance lambda_i / lambda_i ** power.
    np.testing.assert_allclose(np.cov(w.T, bias=True), np.diag(eigenvalues ** (1 - power)),
                               atol=1e-4 * eigenvalues[0])
    if power == 0.0:  # centring and a rotation: distances kept
        np.testing.assert_allclose(_pairwise(w), _pairwise(x), rtol=1e-4)


def test_directions_without_variance_are_dropped_not_blown_up():
    x = _features(n=50, d=4)
    x = np.concatenate([x, x[:, :1] * 2], axis=1)  # a fifth feature that is a copy: rank 4
    mean, projection = fit_whitening(x, power=1.0)
    assert np.isfinite(projection).all()
    assert np.linalg.matrix_rank(projection, tol=1e-3) == 4
    with pytest.raises(ValueError, match="finite"):
        fit_whitening(np.array([[1.0, np.nan], [0.0, 1.0]]), 0.5)


def _config():
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 4, 8, 16
    cfg.model.whiten = 0.5
    return cfg


def test_identity_in_the_train_step_fitted_in_evaluation():
    cfg = _config()
    mesh = make_mesh()
    images = next(eval_batches(digits_catalogue(), np.arange(32), cfg.data, 32))
    tx = optax.adam(1e-3)
    graphdef, eval_graphdef, state = init_train_state(build_model(cfg.model, nnx.Rngs(0), 16), tx)
    prepare = image_normalizer(cfg.data)
    embed = make_embed_fn(eval_graphdef, mesh, prepare)
    state = jax.device_put(state, replicated(mesh))
    plain = np.asarray(embed(state, shard_batch(images, mesh)), np.float64)  # identity until fitted
    mean, projection = fit_whitening(plain, 0.5)
    fitted = state.replace(model_state=with_whitening(state.model_state, mean, projection))
    got = np.asarray(embed(fitted, shard_batch(images, mesh)))
    np.testing.assert_allclose(got, _unit((plain - mean) @ projection), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-2)

    def loss(embeddings, batch, _params):  # reads the embedding the train graph gives
        return jax.numpy.sum(embeddings * batch["target"]), {}

    step = make_train_step(graphdef, tx, loss, mesh, prepare)
    target = np.random.default_rng(0).normal(size=plain.shape).astype(np.float32)
    batch = {"images": shard_batch(images, mesh), "target": shard_batch(target, mesh)}
    copy = lambda tree: jax.tree.map(jax.numpy.copy, tree)  # noqa: E731 (the step donates its state)
    new, _ = step(copy(fitted), batch)
    reference, _ = step(copy(state), batch)  # the same step from the unfitted state
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(reference.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.model_state["whitening"]["projection"][...]), projection)


def test_training_run_checkpoints_the_whitening_of_its_sample_and_the_recognizer_applies_it(tmp_path):
    cfg = _config()
    cfg.train.num_epochs, cfg.train.steps_per_epoch, cfg.model.whiten_images = 1, 5, 60
    cfg.eval.episodes, cfg.eval.baselines = 5, ()
    train_and_evaluate(cfg, str(tmp_path))
    rec = Recognizer.load(str(tmp_path))
    catalogue, split = prepare_data(cfg)
    sample = whitening_sample(split.train, 60, cfg.seed)
    assert len(sample) == 60 and set(sample) <= set(split.train)
    images = [np.asarray(x) for x in eval_batches(catalogue, sample, cfg.data, 60)][0]
    model = nnx.merge(rec.graphdef, rec.params, rec.rest)
    model.whitening.use_fitted = False
    plain = np.asarray(model(rec.prepare(images)), np.float64)
    mean, projection = fit_whitening(plain, 0.5)
    np.testing.assert_allclose(np.asarray(model.whitening.mean[...]), mean, atol=1e-4)
    np.testing.assert_allclose(np.abs(np.asarray(model.whitening.projection[...])), np.abs(projection),
                               rtol=1e-3, atol=1e-3)  # principal directions' signs are arbitrary
    np.testing.assert_allclose(rec.embed(images), _unit((plain - mean) @ model.whitening.projection[...]),
                               rtol=1e-4, atol=1e-5)
