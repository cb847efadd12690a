"""One train step on a 4-device mesh equals the same step on 1 device (forced host devices); training
episodes split between processes make up the single-process batch."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import common
from conftest import REPO
from navee_jax.data.episodes import EpisodeSampler
from navee_jax.data.pipeline import episode_batches
from navee_jax.data.sources import digits_catalogue

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, optax
    from flax import nnx
    from configs import triplet
    from navee_jax.data.pipeline import train_batches
    from navee_jax.data.sources import digits_catalogue
    from navee_jax.models import build_model
    from navee_jax.losses import make_objective
    from navee_jax.sharding import make_mesh, replicated, shard_step_batch
    from navee_jax.embed import image_normalizer
    from navee_jax.train.step import init_train_state, make_train_step

    assert len(jax.devices()) == 4, jax.devices()
    cfg = triplet.get_config("digits")
    cfg.model.width, cfg.model.embed_dim, cfg.data.image_size = 8, 16, 16
    cfg.sampler.classes_per_batch, cfg.sampler.images_per_class = 4, 4
    cat = digits_catalogue()
    batch = next(train_batches(cat, np.flatnonzero(cat.labels < 6), cfg, 0, 1))
    tx = optax.sgd(0.5)  # linear in the gradient: Adam would turn float noise in a near-zero gradient into +-lr
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = make_mesh(devices)
        graphdef, _, state = init_train_state(build_model(cfg.model, nnx.Rngs(0), cfg.data.image_size), tx)
        state = jax.device_put(state, replicated(mesh))
        initial_params = jax.device_get(state.params)  # the step donates (deletes) its input state
        step_batch = shard_step_batch(batch, mesh)
        images = step_batch["images"]
        assert len(images.sharding.device_set) == len(devices)
        assert images.addressable_shards[0].data.shape[0] == 16 // len(devices)
        step = make_train_step(graphdef, tx, make_objective(cfg, cat.labels).loss, mesh, image_normalizer(cfg.data))
        new_state, metrics = step(state, step_batch)
        assert len(new_state.params["head"]["kernel"].sharding.device_set) == len(devices)
        results.append((jax.device_get(metrics), jax.device_get(new_state)))
    (m1, s1), (m4, s4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    assert m1["loss"] > 0
    # parameters after the update, and BatchNorm statistics over the global (not per-device) batch
    for name, a, b in [("params", s1.params, s4.params), ("batch stats", s1.model_state, s4.model_state)]:
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=name)
    moved = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(initial_params)))
    assert moved > 1e-3  # the step really updated the parameters being compared
    print("OK", float(m1["loss"]), float(m4["loss"]), moved)
""")


def test_four_device_step_equals_one_device_step():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.startswith("OK")


def _episode_config(kind: str, **data):
    cfg = common.get_config("digits")
    cfg.sampler.update(kind=kind, ways=3, shots=2, queries=2, tasks_per_batch=4)
    cfg.data.update(image_size=8, **data)  # the source size: no resampling
    return cfg


@pytest.mark.parametrize("kind", ["episodes", "tasks"])
def test_episode_batches_hold_the_sampled_episodes(kind):
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels >= 6)
    cfg = _episode_config(kind, flip=False)  # no augmentation: the images are the pixels themselves
    batches = list(episode_batches(cat, pool, cfg, epoch=3, num_batches=2))
    tasks = 4 if kind == "tasks" else 1
    eps = EpisodeSampler(cat.labels[pool]).sample(3, 2, 2, 2 * tasks, np.random.default_rng([cfg.seed, 4, 3]))
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        assert set(batch) == {"images", "support_labels", "query_labels"}
        assert batch["images"].dtype == np.uint8 and batch["support_labels"].dtype == np.int32
        episodes = range(b * tasks, (b + 1) * tasks)
        idx = pool[np.concatenate([eps.support[episodes], eps.query[episodes]], axis=1)]  # support first
        want = {"images": np.repeat(cat.pixels[idx], 3, axis=-1), "support_labels": eps.support_labels[episodes],
                "query_labels": eps.query_labels[episodes]}
        if kind == "episodes":
            want = {k: v[0] for k, v in want.items()}
            assert batch["images"].shape == (3 * (2 + 2), 8, 8, 3)
        else:
            assert batch["images"].shape == (4, 3 * (2 + 2), 8, 8, 3)
        for key in want:
            np.testing.assert_array_equal(batch[key], want[key], err_msg=key)
    np.testing.assert_array_equal(batches[0]["support_labels"], np.broadcast_to([0, 0, 1, 1, 2, 2], (tasks, 6))
                                  if kind == "tasks" else [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("kind", ["episodes", "tasks"])
def test_episode_batches_split_between_processes_make_up_the_global_batch(kind):
    cat = digits_catalogue()
    pool = np.flatnonzero(cat.labels < 6)
    cfg = _episode_config(kind, flip=True, rotation_deg=20.0)  # augmented: seeded by global position
    whole = list(episode_batches(cat, pool, cfg, epoch=1, num_batches=2))
    shares = [list(episode_batches(cat, pool, cfg, 1, 2, process_index=p, process_count=2)) for p in range(2)]
    for b in range(2):
        if kind == "episodes":  # the episode's images are split, its labels go whole to every process
            assert shares[0][b]["images"].shape == (6, 8, 8, 3)
            for p in range(2):
                for key in ("support_labels", "query_labels"):
                    np.testing.assert_array_equal(shares[p][b][key], whole[b][key])
            split = ["images"]
        else:  # every array is split on the task axis
            assert shares[0][b]["images"].shape == (2, 12, 8, 8, 3)
            split = ["images", "support_labels", "query_labels"]
        for key in split:
            joined = np.concatenate([shares[0][b][key], shares[1][b][key]])
            assert joined.dtype == whole[b][key].dtype and joined.tobytes() == whole[b][key].tobytes(), key
    assert not np.array_equal(whole[0]["images"], whole[1]["images"])
