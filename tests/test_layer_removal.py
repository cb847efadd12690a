"""Layer removal (issue 18): truncated networks against networks built without those layers, and the n x K grid
against a brute-force NumPy 1-NN."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from navee_jax.classify.layer_removal import knn_grid, removable_layers, truncated_forward
from navee_jax.errors import UserError
from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.resnet import ResNet
from navee_jax.models.vgg import VGG


def _copy_shared(src: nnx.Module, dst: nnx.Module) -> None:
    """dst's variables from src's of the same path (dst has a subset of src's layers)."""
    want = nnx.to_pure_dict(nnx.state(dst))

    def fill(into: dict, from_: dict) -> None:
        for k in into:
            if isinstance(into[k], dict):
                fill(into[k], from_[k])
            else:
                into[k] = from_[k]

    fill(want, nnx.to_pure_dict(nnx.state(src)))
    state = nnx.state(dst)
    nnx.replace_by_pure_dict(state, want)
    nnx.update(dst, state)


def test_resnet_without_its_top_stages_equals_a_resnet_built_with_fewer():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
    full = EmbeddingNet(ResNet((1, 1, 1, 1), 8, nnx.Rngs(0)), 5, normalize=False, rngs=nnx.Rngs(1))
    full.eval()
    assert removable_layers(full) == 4
    np.testing.assert_allclose(truncated_forward(full, 0)(full, x), full(x), rtol=1e-6)
    np.testing.assert_allclose(truncated_forward(full, 1)(full, x), full.backbone(x), rtol=1e-6)
    for stages in (3, 2, 1):
        short = ResNet((1,) * stages, 8, nnx.Rngs(2))
        _copy_shared(full.backbone, short)
        short.eval()
        got = truncated_forward(full, 1 + 4 - stages)(full, x)
        np.testing.assert_allclose(got, short(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="must be in"):
        truncated_forward(full, 5)


def test_vgg_without_its_top_layers_equals_vgg_built_with_remove_top_layers():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    backbone = VGG(2, rngs=nnx.Rngs(0), num_classes=7, hidden=16, remove_top_layers=1)
    full = EmbeddingNet(backbone, 4, normalize=False, rngs=nnx.Rngs(1))
    full.eval()
    for n in range(2, 8):  # 1 + the classifier's remaining 6 entries (fc6 ... Dropout)
        short = VGG(2, rngs=nnx.Rngs(3), num_classes=7, hidden=16, remove_top_layers=n)
        _copy_shared(backbone, short)
        short.eval()
        np.testing.assert_allclose(truncated_forward(full, n)(full, x), short(x), rtol=1e-5, atol=1e-6)
    # below the classifier: the last feature layer (a max-pool) removed, the map averaged over space
    no_pool = truncated_forward(full, 8)(full, x)
    h = x
    for layer in list(backbone.features)[:-1]:
        h = layer(h)
    np.testing.assert_allclose(no_pool, h.mean(axis=(1, 2)), rtol=1e-6)


def test_knn_grid_equals_brute_force_nearest_neighbour():
    rng = np.random.default_rng(0)
    pool_labels = np.repeat(np.arange(4), 6)
    query_labels = np.repeat(np.arange(5), 3)  # class 4 has no pool images: left out
    features = {n: (rng.normal(size=(24, 3)), rng.normal(size=(15, 3))) for n in (0, 2)}
    grid = knn_grid(features, pool_labels, query_labels, shots=(1, 3), seeds=4)
    keep = query_labels < 4
    for (n, k), accuracy in grid.items():
        pool, query = features[n]
        for seed in range(4):
            r = np.random.default_rng([seed, k])
            refs = np.concatenate([r.choice(np.flatnonzero(pool_labels == c), k, replace=False) for c in range(4)])
            d = ((query[keep][:, None] - pool[refs][None]) ** 2).sum(-1)
            want = np.mean(pool_labels[refs][d.argmin(1)] == query_labels[keep])
            assert accuracy[seed] == pytest.approx(want)
