"""The Method seam from outside the package: a loss defined and registered entirely in this file trains through
launch.py's loop (navee_jax.launcher.command.run_command, what launch.py calls), and names are looked up in
registries that list what they hold."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import triplet
from navee_jax.distances import cosine_similarity, masked_mean, negative_mask, positive_mask
from navee_jax.errors import UserError
from navee_jax.launcher.command import Command, run_command
from navee_jax.losses import LOSSES, Objective, register_loss
from navee_jax.method import Method, available_methods, method_named, register_method


def cosine_margin_loss(embeddings, labels, margin):
    """Same-class pairs pulled to cosine 1, other-class pairs pushed below `margin`."""
    s = cosine_similarity(embeddings, embeddings)
    pos, neg = positive_mask(labels), negative_mask(labels)
    pull, push = masked_mean(1.0 - s, pos), masked_mean(jnp.maximum(s - margin, 0.0), neg)
    return pull + push, {"pull": pull, "push": push}


@pytest.fixture
def cosine_margin():
    calls = []

    @register_loss("cosine_margin", samplers=("pk",))
    def build(config: ml_collections.ConfigDict, train_labels: np.ndarray) -> Objective:
        calls.append(len(train_labels))
        return Objective(lambda emb, batch, _: cosine_margin_loss(emb, batch["labels"], config.loss.margin))

    yield calls
    del LOSSES["cosine_margin"]


def _toy_config() -> ml_collections.ConfigDict:
    c = triplet.get_config("digits")
    c.loss = ml_collections.ConfigDict({"name": "cosine_margin", "margin": 0.2})
    c.model.backbone, c.model.width, c.data.image_size = "conv4", 8, 16
    c.train.num_epochs, c.train.steps_per_epoch, c.train.log_every = 3, 6, 6
    c.optim.lr = 3e-3
    c.eval.episodes = 5
    return c


def test_a_loss_registered_in_a_test_file_trains_through_the_loop(tmp_path, cosine_margin, capsys):
    run_command(Command(_toy_config(), str(tmp_path), "train", "best", ()))
    out = capsys.readouterr().out
    assert cosine_margin == [1083]  # built once, for the digits' six training classes
    assert " pull " in out and " push " in out  # its own diagnostics reach the progress lines
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["method"], saved["loss"]["name"]) == ("metric_learning", "cosine_margin")


def test_cosine_margin_loss_matches_numpy():
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(8, 5)).astype(np.float32), np.array([0, 0, 1, 1, 2, 2, 2, 0])
    loss, _ = cosine_margin_loss(jnp.asarray(emb), jnp.asarray(labels), 0.2)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = unit @ unit.T
    same, off_diagonal = labels[:, None] == labels[None, :], ~np.eye(8, dtype=bool)
    want = (1 - s)[same & off_diagonal].mean() + np.maximum(s - 0.2, 0)[~same].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("key,value,message", [
    ("loss.name", "cosine_margn", "config key 'loss.name' = 'cosine_margn': unknown loss 'cosine_margn'; available: "
                                  "['contrastive', 'cosine_margin', 'multi_similarity',"),
    ("method", "simclr",
     "config key 'method' = 'simclr': unknown method; available: ['classifier', 'maml', 'metric_learning', "
     "'top_tune']"),
])
def test_unknown_names_list_what_is_registered(tmp_path, cosine_margin, capsys, key, value, message):
    c = _toy_config()
    if key == "method":
        c.method = value
    else:
        c.loss.name = value
    with pytest.raises(SystemExit):
        run_command(Command(c, str(tmp_path / "run"), "train", "best", ()))
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(UserError, match="unknown method 'simclr'"):
        method_named("simclr")


def test_a_registered_method_is_found_by_name():
    class Probe(Method):
        name = "probe"

        def sampler_kinds(self, config):
            return ("pk",)

        def images_per_step(self, config):
            return 1

        def build(self, config, catalogue, split, mesh, steps_per_epoch):
            raise NotImplementedError

    probe = register_method(Probe())
    try:
        assert method_named("probe") is probe and "probe" in available_methods()
        assert method_named("maml").name == "maml"  # built-ins are imported on first use
    finally:
        from navee_jax import method

        del method._registered["probe"]
