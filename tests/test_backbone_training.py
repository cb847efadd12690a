"""Every backbone trains behind the embedding head with the triplet config; bf16 compute keeps float32 weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import triplet
from navee_jax.data.pipeline import train_batches
from navee_jax.data.sources import digits_catalogue
from navee_jax.models import build_model
from navee_jax.losses import make_objective
from navee_jax.sharding import make_mesh, replicated, shard_step_batch
from navee_jax.embed import image_normalizer
from navee_jax.train.step import init_train_state, make_train_step

# (backbone, width, image size, extra model / data settings, Adam lr, steps): the smallest inputs each
# topology takes. Koch's paper initialisation starts with nearly equal embeddings (loss at the margin)
# and needs ~15 steps to leave that plateau; ResNet-50's 16 blocks need a larger step on one batch.
TINY = [
    ("resnet18", 4, 16, {}, 1e-3, 6),
    ("resnet50", 4, 16, {}, 1e-2, 8),
    ("conv4", 8, 16, {}, 1e-3, 6),
    ("koch", 4, 65, {"in_channels": 1, "grayscale": True}, 1e-3, 25),  # 65 px: the least its unpadded convs allow
    ("vgg16", 2, 32, {"remove_top_layers": 1}, 1e-3, 6),
    ("vgg16_bn", 2, 32, {"remove_top_layers": 4}, 1e-3, 6),
]


def _config(backbone: str, width: int, size: int, extra: dict):
    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = backbone, width, 16, size
    cfg.sampler.classes_per_batch, cfg.sampler.images_per_class = 4, 4
    for key, value in extra.items():
        (cfg.data if key == "grayscale" else cfg.model)[key] = value
    return cfg


def _losses(cfg, steps: int, lr: float = 1e-3) -> tuple[list[float], object]:
    """Triplet losses of `steps` Adam steps on one fixed PK batch of digits (and the final state)."""
    cat = digits_catalogue()
    batch = next(train_batches(cat, np.flatnonzero(cat.labels < 6), cfg, 0, 1))
    mesh, tx = make_mesh(), optax.adam(lr)
    graphdef, _, state = init_train_state(build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size), tx)
    prepare = image_normalizer(cfg.data, cfg.model.in_channels)
    step = make_train_step(graphdef, tx, make_objective(cfg, cat.labels).loss, mesh, prepare)
    state = jax.device_put(state, replicated(mesh))
    batch = shard_step_batch(batch, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.mark.parametrize("backbone,width,size,extra,lr,steps", TINY, ids=[t[0] for t in TINY])
def test_every_backbone_trains_with_the_triplet_loss(backbone, width, size, extra, lr, steps):
    losses, _ = _losses(_config(backbone, width, size, extra), steps, lr)
    assert np.all(np.isfinite(losses)) and losses[0] > 0
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("backbone, width, size, computed_in_bf16", [
    ("resnet18", 4, 16, "bf16[8,8,8,4]"),  # the first convolution's output
    ("vit_s16", 0, 32, "bf16[8,5,384]"),  # the tokens
])
def test_bfloat16_compute_keeps_float32_parameters_and_follows_float32(backbone, width, size, computed_in_bf16):
    cfg32 = _config(backbone, width, size, {})
    cfg16 = _config(backbone, width, size, {"compute_dtype": "bfloat16"})
    m32 = build_model(cfg32.model, nnx.Rngs(0), size)
    m16 = build_model(cfg16.model, nnx.Rngs(0), size)
    m32.eval(), m16.eval()
    x = jax.random.normal(jax.random.key(1), (8, size, size, 3))
    # The network really runs in bf16 ...
    jaxpr = str(jax.make_jaxpr(lambda v: m16(v))(x))
    assert computed_in_bf16 in jaxpr
    assert "bf16" not in str(jax.make_jaxpr(lambda v: m32(v))(x))
    # ... from the same float32 parameters, to float32 embeddings close to the float32 model's.
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    z16, z32 = m16(x), m32(x)
    assert z16.dtype == jnp.float32
    np.testing.assert_allclose(z16, z32, atol=3e-2)
    assert float(jnp.abs(z16 - z32).max()) > 0  # not secretly float32
    losses, state = _losses(cfg16, steps=6)
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state.model_state) if jnp.issubdtype(s.dtype,
                                                                                                   jnp.floating))
