"""After top-tuning: a run that starts from a trained workdir (`model.init_workdir`) embeds as that workdir does, a
ViT's `model.train_last_blocks` trains exactly its last n blocks and what follows them, and the MLP head
(`model.head_hidden`) is the NumPy formula."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import top_tune, triplet
from navee_jax.checkpoints import Checkpoints
from navee_jax.data.pipeline import eval_batches
from navee_jax.errors import UserError
from navee_jax.launcher.train import build_setup, train_and_evaluate
from navee_jax.losses import make_objective
from navee_jax.models import build_model
from navee_jax.models.embedding import EmbeddingNet
from navee_jax.models.stages import frozen_stages
from navee_jax.models.vit import ViT, ViTSpec
from navee_jax.recognize import Recognizer
from navee_jax.sharding import make_mesh, replicated, shard_step_batch
from navee_jax.train.step import init_train_state, make_train_step


def _tiny(cfg):
    cfg.model.backbone, cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = "conv4", 8, 16, 16
    cfg.sampler.classes_per_batch, cfg.sampler.images_per_class = 4, 4
    cfg.train.num_epochs, cfg.train.steps_per_epoch, cfg.eval.episodes = 1, 3, 5
    return cfg


def test_a_run_started_from_a_top_tuned_workdir_embeds_as_that_workdir(tmp_path):
    source = _tiny(top_tune.get_config("digits"))
    source.top.cache_dir, source.model.head_hidden = str(tmp_path / "cache"), 24
    train_and_evaluate(source, str(tmp_path / "top"))
    rec = Recognizer.load(str(tmp_path / "top"))

    cfg = _tiny(triplet.get_config("digits"))
    saved = Checkpoints(str(tmp_path / "top"))  # read-only
    last = saved.latest_step()
    saved.close()
    cfg.model.head_hidden, cfg.model.init_workdir = 24, str(tmp_path / "top" / "checkpoints" / str(last))
    setup = build_setup(cfg)
    images = next(eval_batches(setup.catalogue, setup.split.query[:16], cfg.data, 16))
    started = np.asarray(setup.trainer.embed_fn(setup.trainer.state, images))
    np.testing.assert_allclose(started, rec.embed(list(images)), rtol=1e-5, atol=1e-6)
    fresh = _tiny(triplet.get_config("digits"))
    fresh.model.head_hidden = 24
    untouched = build_setup(fresh).trainer
    assert not np.allclose(np.asarray(untouched.embed_fn(untouched.state, images)), started, atol=1e-3)

    cfg.model.head_hidden = 0  # another head: one line naming the first tensor that does not fit
    with pytest.raises(UserError, match=r"model.init_workdir=.*does not fit this run's model: head/kernel"):
        build_setup(cfg)


def _tiny_vit(depth: int = 3) -> EmbeddingNet:
    spec = ViTSpec(image_size=16, patch_size=8, dim=16, depth=depth, heads=2, mlp_dim=32)
    return EmbeddingNet(ViT(spec, 3, rngs=nnx.Rngs(0)), 8, True, rngs=nnx.Rngs(1))


def test_train_last_blocks_trains_the_last_blocks_and_everything_after_them():
    model = _tiny_vit()
    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.train_last_blocks = "vit_s16", 1
    frozen = frozen_stages(cfg.model, model)
    assert frozen == ("patch", "cls_token", "positions", "blocks.0", "blocks.1")  # by hand: all below blocks.2

    tx = optax.sgd(0.1)
    labels = np.repeat(np.arange(4), 2).astype(np.int32)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    graphdef, _, state = init_train_state(model, tx, False, frozen)
    mesh = make_mesh()
    step = make_train_step(graphdef, tx, make_objective(cfg, labels).loss, mesh, None, frozen)
    before = nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state.params, state.model_state), nnx.Param))
    before = {k: np.array(v.get_value()) for k, v in before}
    new, _ = step(jax.device_put(state, replicated(mesh)),
                  shard_step_batch({"images": images.astype(np.float32) / 255, "labels": labels}, mesh))
    after = nnx.to_flat_state(nnx.state(nnx.merge(graphdef, new.params, new.model_state), nnx.Param))
    moved = {"/".join(map(str, k[:3])) for k, v in after if not np.array_equal(before[k], np.asarray(v.get_value()))}
    stages = {"/".join(map(str, k[:3])) for k, _ in after}
    expected = {s for s in stages if s.startswith(("backbone/blocks/2", "backbone/norm", "head"))}
    assert moved == expected, sorted(moved ^ expected)

    cfg.model.train_last_blocks = 4
    with pytest.raises(UserError, match="this ViT has 3 blocks"):
        frozen_stages(cfg.model, model)
    cfg.model.backbone, cfg.model.train_last_blocks = "conv4", 1
    with pytest.raises(UserError, match="for the vit_\\* backbones"):
        frozen_stages(cfg.model, build_model(cfg.model, nnx.Rngs(0), 28))


def test_the_mlp_head_is_relu_between_two_projections_then_l2():
    cfg = triplet.get_config("digits")
    cfg.model.backbone, cfg.model.width, cfg.model.embed_dim, cfg.model.head_hidden = "conv4", 8, 6, 10
    model = build_model(cfg.model, nnx.Rngs(0), 28)
    z = np.random.default_rng(1).normal(size=(5, model.backbone.out_features)).astype(np.float32)
    w1, b1 = (np.asarray(model.head_hidden.kernel[...]), np.asarray(model.head_hidden.bias[...]))
    w2, b2 = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
    ref = np.maximum(z @ w1 + b1, 0) @ w2 + b2
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model.embed_features(z)), ref, rtol=1e-5, atol=1e-6)
    assert w1.shape == (model.backbone.out_features, 10) and w2.shape == (10, 6)
