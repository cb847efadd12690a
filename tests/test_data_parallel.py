"""One train step on a 4-device mesh equals the same step on 1 device (forced host devices)."""

import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np, optax
    from flax import nnx
    from configs import triplet
    from navee_jax.data.pipeline import train_batches
    from navee_jax.data.sources import digits_catalogue
    from navee_jax.models import build_model
    from navee_jax.train.objectives import make_objective
    from navee_jax.train.sharding import make_mesh, replicated, shard_step_batch
    from navee_jax.train.step import image_normalizer, init_train_state, make_train_step

    assert len(jax.devices()) == 4, jax.devices()
    cfg = triplet.get_config()
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
