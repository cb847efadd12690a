"""Every loss, value and gradient, on a batch sharded over a 4-device mesh equals the single-device result.

Losses see the global batch (mining crosses devices), so sharding must change nothing but float rounding.
One subprocess (forced host devices) runs every loss to keep the test fast.
"""

import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from navee_jax import losses as L

    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    DATA, REP = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    rng = np.random.default_rng(0)
    n, d = 16, 6
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb[3] = emb[2]  # duplicated embeddings within a shard (device 0 holds rows 0-3)...
    emb[8] = emb[7]  # ...and across shards (devices 1 and 2)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 3, 3, 3, 4, 5, 5, 2, 9])  # label 4 and 9 are singletons
    other = rng.normal(size=(n, d)).astype(np.float32)
    third = rng.normal(size=(n, d)).astype(np.float32)
    proxies = np.asarray(L.init_proxies(jax.random.key(0), 10, d))
    episode_labels = np.tile(np.arange(4), 4)

    # name -> (loss(*args) -> (loss, aux), args, sharding per arg, argnums differentiated)
    cases = {
        "contrastive_batch": (lambda e, y: L.contrastive_batch_loss(e, y, 1.5, 0.3), (emb, labels), (DATA, DATA), 0),
        "contrastive_pair": (lambda a, b, s: L.contrastive_pair_loss(a, b, s, 1.5, 0.5),
                             (emb, other, labels % 2 == 0), (DATA, DATA, DATA), (0, 1)),
        "sampled_triplet": (lambda a, p, q: L.sampled_triplet_loss(a, p, q, 1.0), (emb, other, third),
                            (DATA, DATA, DATA), (0, 1, 2)),
        "prototypical": (lambda s, sy, q, qy: L.prototypical_loss(s, sy, q, qy, 4),
                         (emb, episode_labels, other, episode_labels[::-1].copy()), (DATA,) * 4, (0, 2)),
        "batched_prototypical": (lambda s, sy, q, qy: L.batched_prototypical_loss(s, sy, q, qy, 4),
                                 (emb.reshape(4, 4, d), episode_labels.reshape(4, 4), other.reshape(4, 4, d),
                                  episode_labels.reshape(4, 4)), (DATA,) * 4, (0, 2)),
        "multi_similarity": (lambda e, y: L.multi_similarity_loss(e, y), (emb, labels), (DATA, DATA), 0),
        "proxy_anchor": (lambda e, y, p: L.proxy_anchor_loss(e, y, p), (emb, labels, proxies), (DATA, DATA, REP),
                         (0, 2)),
    }
    for miner in L.MINERS:
        for metric in ("euclidean", "cosine"):
            cases[f"triplet_{miner}_{metric}"] = (
                lambda e, y, m=miner, k=metric: L.triplet_loss(e, y, 0.5, m, k, top_fraction=0.3),
                (emb, labels), (DATA, DATA), 0)

    for name, (loss_fn, args, shardings, argnums) in cases.items():
        def value_and_grad(*a, loss_fn=loss_fn, argnums=argnums):
            (loss, aux), grads = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=True)(*a)
            return loss, aux, grads
        single = jax.jit(value_and_grad)(*[jax.device_put(a, jax.devices()[0]) for a in args])
        placed = [jax.device_put(a, s) for a, s in zip(args, shardings)]
        assert placed[0].addressable_shards[0].data.shape[0] == args[0].shape[0] // 4, name
        sharded = jax.jit(value_and_grad, in_shardings=shardings)(*placed)
        assert len(sharded[0].sharding.device_set) == 4, name
        assert float(single[0]) > 0, name
        for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6, err_msg=name)
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(single[2])), name
    print("OK", len(cases))
""")


def test_every_loss_sharded_over_four_devices_equals_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.startswith("OK")
