"""A MAML meta-step with its tasks sharded over 4 devices equals the same step on 1 device (forced host
devices, in a subprocess), and so does the fine-tuning evaluation with its episodes sharded."""

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
    from configs import maml as maml_config
    from navee_jax.data.sources import digits_catalogue
    from navee_jax.data.splits import make_split
    from navee_jax.meta.evaluate import FineTuneEpisodes
    from navee_jax.meta.train import build_network, init_state, make_meta_step
    from navee_jax.data.pipeline import episode_batches
    from navee_jax.sharding import make_mesh, replicated, shard_step_batch
    from navee_jax.embed import image_normalizer

    assert len(jax.devices()) == 4, jax.devices()
    cfg = maml_config.get_config("digits")
    cfg.model.width, cfg.data.image_size, cfg.sampler.tasks_per_batch = 4, 16, 8
    cfg.loss.learn_inner_lr = True  # Meta-SGD: the step sizes are updated from the sharded step too
    cat = digits_catalogue()
    split = make_split(cat, cfg.split, cfg.seed)
    batch = next(iter(episode_batches(cat, split.train, cfg, 0, 1)))
    tx = optax.sgd(0.5)  # linear in the gradient, so that equal gradients give equal parameters
    prepare = image_normalizer(cfg.data)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = make_mesh(devices)
        graphdef, state = init_state(build_network(cfg, nnx.Rngs(0)), tx, cfg.loss)
        state = jax.device_put(state, replicated(mesh))
        initial = jax.device_get(state.params)  # the step donates its input state
        step_batch = shard_step_batch(batch, mesh)
        images = step_batch["images"]
        assert images.addressable_shards[0].data.shape[0] == 8 // len(devices), images.sharding
        assert len(step_batch["support_labels"].sharding.device_set) == len(devices)
        new_state, metrics = make_meta_step(graphdef, tx, mesh, prepare, cfg)(state, step_batch)
        fine_tune = FineTuneEpisodes(cat, split, cfg, graphdef, mesh, prepare)(new_state, (1,), 6, 0)
        results.append((jax.device_get(metrics), jax.device_get(new_state), fine_tune))
    (m1, s1, f1), (m4, s4, f4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for name, a, b in [("params", s1.params, s4.params), ("step sizes", s1.loss_params, s4.loss_params)]:
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=name)
    moved = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(initial)))
    assert moved > 1e-3  # the step really updated the parameters being compared
    assert f1 == f4, (f1, f4)
    print("OK", float(m1["loss"]), float(m4["loss"]), moved, f1)
""")


def test_four_device_meta_step_equals_one_device_meta_step():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.startswith("OK")
