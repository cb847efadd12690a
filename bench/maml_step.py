r"""One second-order MAML meta-gradient, vmapped over the meta-batch, scanned over it (the meta-step's path on a
CPU mesh) and looped over tasks in Python, side by side in one run (docs/maml.md).

    python bench/maml_step.py [--tasks=32 --ways=5 --shots=1 --queries=1 --width=64 --inner_steps=1 --repeats=9]

All three compute the meta-gradient of the mean query loss of `tasks` tasks (Conv-4 at 28x28, a `ways`-way head,
BatchNorm on batch statistics, convolutions as matrix products, max-pools by reshapes: navee_jax.meta) on the
same random images: "vmapped" and "scanned" are one jitted call of `mean_over_tasks` with that strategy (every
task at once; one task at a time inside the program, gradients summed); "looped" calls a jitted one-task
gradient once per task from Python and averages the gradients on the device. Compilation is excluded
(one warm-up call each); times are the median of `repeats` rounds that call each of the three once. The
script also prints how far the vmapped and scanned gradients are from the loop's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from configs import maml as maml_config  # noqa: E402
from navee_jax.meta import maml  # noqa: E402
from navee_jax.meta.train import build_network  # noqa: E402


def median_seconds(fns: list, repeats: int) -> list[float]:
    """Median time of each function over `repeats` rounds, one call of each per round (interleaved, so that
    a slow spell of the machine slows all of them alike)."""
    for fn in fns:
        jax.block_until_ready(fn())  # compile / warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--inner_steps", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()

    c = maml_config.get_config("omniglot")
    c.model.width, c.sampler.ways = a.width, a.ways
    graphdef, params, rest = nnx.split(build_network(c, nnx.Rngs(0)), nnx.Param, ...)
    apply_fn = maml.make_apply(graphdef, rest)
    sizes = maml.constant_step_sizes(params, c.loss.inner_lr)
    rng = np.random.default_rng(0)
    size = c.data.image_size

    def labels(n: int) -> jax.Array:
        return jnp.tile(jnp.repeat(jnp.arange(a.ways), n), (a.tasks, 1))

    tasks = {"support_images": jnp.asarray(rng.normal(size=(a.tasks, a.ways * a.shots, size, size, 3)), jnp.float32),
             "support_labels": labels(a.shots),
             "query_images": jnp.asarray(rng.normal(size=(a.tasks, a.ways * a.queries, size, size, 3)), jnp.float32),
             "query_labels": labels(a.queries)}

    def task_fn(p, task):
        return maml.task_loss(apply_fn, p, sizes, task, a.inner_steps)

    vmapped, scanned = (jax.jit(lambda p, s=s: maml.mean_over_tasks(task_fn, p, tasks, s)[1]) for s in ("vmap", "scan"))
    one_task = jax.jit(jax.grad(lambda p, task: task_fn(p, task)[0]))
    per_task = [jax.tree.map(lambda x, t=t: x[t], tasks) for t in range(a.tasks)]  # sliced once, outside the timing
    average = jax.jit(lambda grads: jax.tree.map(lambda *g: sum(g) / len(g), *grads))

    def looped():
        return average([one_task(params, task) for task in per_task])

    t_vmap, t_scan, t_loop = median_seconds([lambda: vmapped(params), lambda: scanned(params), looped], a.repeats)
    g_loop = ravel_pytree(looped())[0]
    diff = {name: float(jnp.linalg.norm(ravel_pytree(fn(params))[0] - g_loop) / jnp.linalg.norm(g_loop))
            for name, fn in (("vmapped", vmapped), ("scanned", scanned))}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform} ({len(jax.devices())} device(s))")
    print(f"one second-order meta-gradient: {a.tasks} tasks, {a.ways}-way {a.shots}-shot, {a.queries} queries per "
          f"class, {a.inner_steps} inner step(s), Conv-4 width {a.width} at {size}x{size}")
    print(f"  vmapped over tasks (one jitted call):               {t_vmap * 1e3:9.1f} ms")
    print(f"  scanned over tasks (one jitted call; CPU meta-step): {t_scan * 1e3:9.1f} ms")
    print(f"  Python loop over tasks (jitted per task):           {t_loop * 1e3:9.1f} ms")
    print(f"  ratio loop / vmapped: {t_loop / t_vmap:.2f}x; loop / scanned: {t_loop / t_scan:.2f}x; relative "
          f"difference from the loop's gradient: vmapped {diff['vmapped']:.1e}, scanned {diff['scanned']:.1e}")


if __name__ == "__main__":
    main()
