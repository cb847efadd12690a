"""MAML / Meta-SGD (navee_jax.meta) against independent references: central finite differences of the
meta-objective in float64, a first-order reference that holds concrete inner gradients constant, a Python
loop over tasks, lax.conv for the matmul convolutions, and hand-written fine-tuning for the evaluator."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from configs import maml as maml_config
from navee_jax.errors import UserError
from navee_jax.meta import maml
from navee_jax.meta.conv import reshape_max_pool, shifted_slices_conv
from navee_jax.models.conv4 import ConvBlock, max_pool_2x2
from navee_jax.meta.train import build_network, check_config

WAYS, SHOTS, QUERIES, TASKS, STEPS = 3, 2, 2, 2, 2


def tiny_config():
    c = maml_config.get_config("digits")
    c.model.width, c.model.in_channels, c.data.image_size, c.data.grayscale = 2, 1, 16, True
    c.sampler.ways, c.sampler.shots, c.sampler.queries = WAYS, SHOTS, QUERIES
    return c


def tiny_problem(dtype=jnp.float64, seed=0):
    """(apply, params, tasks): Conv-4 of width 2 on 16x16x1 with a 3-way head (159 parameters), and
    random tasks of 3-way 2-shot 2-query."""
    model = build_network(tiny_config(), nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    rng = np.random.default_rng(seed)
    labels = lambda n: np.tile(np.repeat(np.arange(WAYS), n), (TASKS, 1))  # noqa: E731
    tasks = {"support_images": rng.normal(size=(TASKS, WAYS * SHOTS, 16, 16, 1)).astype(dtype),
             "support_labels": labels(SHOTS),
             "query_images": rng.normal(size=(TASKS, WAYS * QUERIES, 16, 16, 1)).astype(dtype),
             "query_labels": labels(QUERIES)}
    rest = jax.tree.map(lambda x: x.astype(dtype), rest)  # the (unused) running averages BatchNorm writes
    return maml.make_apply(graphdef, rest), params, tasks


def central_differences(f, x, eps=1e-6):
    """(f(x + eps e_i) - f(x - eps e_i)) / 2 eps for every coordinate i of the pytree x, in one vmapped call."""
    flat, unravel = ravel_pytree(x)
    basis = jnp.eye(flat.size, dtype=flat.dtype) * eps
    values = jax.jit(jax.vmap(lambda d: f(unravel(flat + d))))(jnp.concatenate([basis, -basis]))
    return unravel((values[:flat.size] - values[flat.size:]) / (2 * eps))


def relative_error(a, b):
    return float(jnp.linalg.norm(ravel_pytree(a)[0] - ravel_pytree(b)[0]) / jnp.linalg.norm(ravel_pytree(b)[0]))


def test_second_order_meta_gradient_and_meta_sgd_step_size_gradient_equal_finite_differences():
    """float64; at MAML's point (every step size 0.5) the gradient with respect to the parameters is MAML's
    second-order meta-gradient, the one with respect to the step sizes Meta-SGD's."""
    with jax.enable_x64(True):
        apply, params, tasks = tiny_problem()
        sizes = maml.constant_step_sizes(params, 0.5)

        def objective(both, first_order=False):
            return maml.meta_objective(apply, both[0], both[1], tasks, STEPS, first_order)[0]

        grad = jax.jit(jax.grad(objective))((params, sizes))
        fd = central_differences(objective, (params, sizes))
        assert relative_error(grad[0], fd[0]) < 1e-5
        assert relative_error(grad[1], fd[1]) < 1e-5
        # The check has teeth: the first-order gradient is far from the finite differences.
        first_order = jax.jit(jax.grad(lambda b: objective(b, True)))((params, sizes))
        assert relative_error(first_order[0], fd[0]) > 1e-2


def test_first_order_equals_the_gradient_with_inner_gradients_held_constant():
    """Reference: run the inner loop once, keep its gradients as concrete arrays, and differentiate the query
    loss of params - sum_k lr * g_k with respect to params and (Meta-SGD) step sizes, the g_k being inputs."""
    with jax.enable_x64(True):
        apply, params, tasks = tiny_problem(seed=2)
        rng = np.random.default_rng(2)
        sizes = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0.1, 0.6, p.shape)), params)  # per parameter
        got = jax.jit(jax.grad(lambda p, s: maml.meta_objective(apply, p, s, tasks, STEPS, first_order=True)[0],
                               argnums=(0, 1)))(params, sizes)

        @jax.jit
        def inner_gradients(task):
            def support_loss(p):
                return maml.cross_entropy(apply(p, task["support_images"]), task["support_labels"])[0]
            adapted, gradients = params, []
            for _ in range(STEPS):
                gradients.append(jax.grad(support_loss)(adapted))
                adapted = jax.tree.map(lambda p, s, g: p - s * g, adapted, sizes, gradients[-1])
            return gradients

        @jax.jit
        def reference(task, gradients):
            def query_loss(p, s):
                for g in gradients:
                    p = jax.tree.map(lambda pi, si, gi: pi - si * gi, p, s, g)
                return maml.cross_entropy(apply(p, task["query_images"]), task["query_labels"])[0]
            return jax.grad(query_loss, argnums=(0, 1))(params, sizes)

        per_task = []
        for t in range(TASKS):
            task = jax.tree.map(lambda x, t=t: x[t], tasks)
            per_task.append(reference(task, jax.device_get(inner_gradients(task))))
        want = jax.tree.map(lambda *g: sum(g) / TASKS, *per_task)
        assert relative_error(got, want) < 1e-10


def test_vmapped_and_scanned_meta_batches_equal_a_python_loop_over_tasks():
    """The meta-gradient (with Meta-SGD's step-size gradient), loss and accuracy of both strategies of
    `mean_over_tasks` equal a loop over tasks, each task's gradient taken alone."""
    apply, params, tasks = tiny_problem(jnp.float32, seed=3)
    sizes = jax.tree.map(lambda p: 0.4 + 0.1 * jnp.linspace(0.0, 1.0, p.size).reshape(p.shape), params)  # Meta-SGD's

    def task_fn(args, task):
        return maml.task_loss(apply, args[0], args[1], task, STEPS)

    one = jax.jit(jax.value_and_grad(task_fn, has_aux=True))
    looped = [one((params, sizes), jax.tree.map(lambda x, t=t: x[t], tasks)) for t in range(TASKS)]
    want_grads = jax.tree.map(lambda *g: sum(g) / TASKS, *[g for _, g in looped])
    want_loss = np.mean([float(v[0]) for v, _ in looped])
    want_accuracy = np.mean([float(v[1]) for v, _ in looped])
    for strategy in ("vmap", "scan"):
        run = jax.jit(lambda args, s=strategy: maml.mean_over_tasks(task_fn, args, tasks, s))
        (loss, aux), grads = run((params, sizes))
        assert relative_error(grads, want_grads) < 1e-5, strategy
        np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
        np.testing.assert_allclose(float(aux["query_accuracy"]), want_accuracy, rtol=1e-6)


def test_batchnorm_normalises_with_the_batch_it_is_given():
    """As in Finn et al.'s code, in training and test alike: a network output depends on the other images of
    the batch, and equals flax's own train-mode network (BatchNorm on batch statistics, lax convolutions instead
    of use_matmul_convs')."""
    apply, params, tasks = tiny_problem(jnp.float32, seed=4)
    apply = jax.jit(apply)
    x = tasks["query_images"][0]
    assert not np.allclose(apply(params, x)[:2], apply(params, x[:2]), atol=1e-4)
    np.testing.assert_allclose(apply(params, x), _flax_network(4)(x), rtol=1e-4, atol=1e-5)


def _flax_network(seed: int) -> nnx.Module:
    """build_network's Conv-4 with flax's own convolutions and max-pools instead of use_matmul_convs'."""
    reference = build_network(tiny_config(), nnx.Rngs(seed))
    for _, m in nnx.iter_graph(reference):
        if isinstance(m, nnx.Conv):
            m.conv_general_dilated = jax.lax.conv_general_dilated
        if isinstance(m, ConvBlock):
            m.pool = max_pool_2x2
    return reference


@pytest.mark.parametrize("size", [7, 8])
def test_reshape_max_pool_equals_max_pool_with_first_and_second_derivatives_vmapped(size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(3, 2, size, size, 4)), jnp.float32)

    def derivatives(pool):
        f = lambda a: jnp.sum(jnp.sin(pool(a)) * jnp.arange(1.0, 5.0))  # noqa: E731
        second = jax.grad(lambda a: jnp.sum(jax.grad(f)(a) ** 3))
        return jax.jit(jax.vmap(lambda a: (pool(a), jax.grad(f)(a), second(a))))(x)

    for ours, reference in zip(derivatives(reshape_max_pool), derivatives(max_pool_2x2)):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_meta_gradient_of_the_vmapped_network_equals_flax_convolutions_and_pools_on_binary_drawings():
    """Binary images tie many pooled maxima at positive values (equal patches); the jitted, vmapped
    second-order meta-gradient of use_matmul_convs' network still equals the flax network's."""
    apply, params, tasks = tiny_problem(jnp.float32, seed=5)
    tasks = {k: (v > 0.5).astype(np.float32) if k.endswith("images") else v for k, v in tasks.items()}
    graphdef, _, rest = nnx.split(_flax_network(5), nnx.Param, ...)
    reference = maml.make_apply(graphdef, rest)
    sizes = maml.constant_step_sizes(params, 0.4)
    grads = [jax.jit(jax.grad(lambda p, a=a: maml.meta_objective(a, p, sizes, tasks, STEPS)[0]))(params)
             for a in (apply, reference)]
    assert relative_error(*grads) < 1e-5


@pytest.mark.parametrize("cin,cout,size,pad", [(3, 5, 7, 1), (2, 3, 6, 2)])
def test_shifted_slices_conv_equals_lax_conv_also_vmapped_over_kernels(cin, cout, size, pad):
    rng = np.random.default_rng(cin)
    x = jnp.asarray(rng.normal(size=(3, 2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, cin, cout)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def reference(xi, wi):
        return jax.lax.conv_general_dilated(xi, wi, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=dn,
                                            precision="highest")

    def ours(xi, wi):
        return shifted_slices_conv(xi, wi, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=dn,
                                   precision="highest")

    np.testing.assert_allclose(jax.vmap(ours)(x, w), jax.vmap(reference)(x, w), rtol=1e-5, atol=1e-5)
    gx = jax.jit(jax.grad(lambda a, b: (jax.vmap(ours)(a, b) ** 2).sum(), argnums=(0, 1)))(x, w)
    gr = jax.jit(jax.grad(lambda a, b: (jax.vmap(reference)(a, b) ** 2).sum(), argnums=(0, 1)))(x, w)
    for a, b in zip(gx, gr):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="stride 1"):
        shifted_slices_conv(x[0], w[0], (2, 2), ((pad, pad), (pad, pad)), dimension_numbers=dn)


@pytest.mark.parametrize("override,culprit", [
    ({"loss.inner_steps": 0}, "loss.inner_steps=0"),
    ({"loss.eval_inner_steps": 0}, "loss.eval_inner_steps=0"),
    ({"loss.inner_lr": -0.1}, "loss.inner_lr=-0.1"),
    ({"sampler.tasks_per_batch": 0}, "sampler.tasks_per_batch=0"),
    ({"sampler.kind": "episodes"}, "sampler.kind='episodes'"),
    ({"model.backbone": "resnet18"}, "model.backbone='resnet18'"),
    ({"model.frozen_batchnorm": True}, "model.frozen_batchnorm=True"),
    ({"model.normalize": True}, "model.normalize"),
])
def test_bad_maml_settings_are_one_line_errors_naming_the_key(override, culprit):
    c = maml_config.get_config("digits")
    for key, value in override.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    with pytest.raises(UserError, match=culprit.replace("(", r"\(").replace(")", r"\)")) as e:
        check_config(c)
    assert "\n" not in str(e.value)


def test_the_head_follows_sampler_ways():
    c = maml_config.get_config("omniglot")
    c.sampler.ways = 20
    assert c.model.embed_dim == 20
    check_config(c)


def test_meta_step_updates_meta_sgd_step_sizes_and_never_batchnorm_running_averages():
    from navee_jax.meta.train import init_state, make_meta_step
    from navee_jax.sharding import make_mesh, replicated

    c = tiny_config()
    c.loss.learn_inner_lr = True
    _, _, tasks = tiny_problem(jnp.float32)
    batch = {"images": np.concatenate([tasks["support_images"], tasks["query_images"]], axis=1),
             "support_labels": tasks["support_labels"], "query_labels": tasks["query_labels"]}
    tx = optax.sgd(0.1)
    graphdef, state = init_state(build_network(c, nnx.Rngs(0)), tx, c.loss)
    before = jax.device_get(state)
    mesh = make_mesh()
    step = make_meta_step(graphdef, tx, mesh, lambda x: x, c)
    after, metrics = step(jax.device_put(state, replicated(mesh)), batch)
    after = jax.device_get(after)
    moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert moved(after.loss_params, before.loss_params) > 1e-4 and moved(after.params, before.params) > 1e-4
    assert moved(after.model_state, before.model_state) == 0.0
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["query_accuracy"] <= 1


def test_fine_tuning_evaluation_equals_a_hand_written_loop_over_the_same_episodes():
    """FineTuneEpisodes (vmapped, chunked, wrapped) against each episode fine-tuned on its own by flax's own
    train-mode network (lax convolutions) with plain gradient steps, on the episodes the sampler draws."""
    from navee_jax.data.pipeline import eval_batches
    from navee_jax.data.sources import digits_catalogue
    from navee_jax.data.splits import make_split
    from navee_jax.data.episodes import EpisodeSampler
    from navee_jax.meta.evaluate import FineTuneEpisodes
    from navee_jax.meta.train import init_state
    from navee_jax.sharding import make_mesh
    from navee_jax.embed import image_normalizer

    c = maml_config.get_config("digits")
    c.model.width, c.data.image_size, c.eval.batch_size, c.loss.eval_inner_steps = 4, 16, 64, 2
    cat = digits_catalogue()
    split = make_split(cat, c.split, c.seed)
    prepare = image_normalizer(c.data)
    graphdef, state = init_state(build_network(c, nnx.Rngs(0)), optax.sgd(1.0), c.loss)
    episodes = 5  # 64 // (4 * (1 + 15)) = 1 episode per call: five calls
    got = FineTuneEpisodes(cat, split, c, graphdef, make_mesh(), prepare)(state, (1,), episodes, seed=3)[0]

    reference = build_network(c, nnx.Rngs(0))
    for _, m in nnx.iter_graph(reference):
        if isinstance(m, nnx.Conv):
            m.conv_general_dilated = jax.lax.conv_general_dilated
    ref_graphdef, params, rest = nnx.split(reference, nnx.Param, ...)

    @jax.jit
    def predict(support, support_labels, query):
        def loss(p):
            logits = nnx.merge(ref_graphdef, p, rest, copy=True)(prepare(support))
            return optax.softmax_cross_entropy_with_integer_labels(logits, support_labels).mean()
        p = params
        for _ in range(c.loss.eval_inner_steps):
            p = jax.tree.map(lambda a, g: a - c.loss.inner_lr * g, p, jax.grad(loss)(p))
        return jnp.argmax(nnx.merge(ref_graphdef, p, rest, copy=True)(prepare(query)), axis=-1)

    pool = lambda idx: np.concatenate(list(eval_batches(cat, idx, c.data, 256)))  # noqa: E731
    support_pool, query_pool = pool(split.support), pool(split.query)
    eps = EpisodeSampler(cat.labels[split.support], cat.labels[split.query]).sample(
        4, 1, c.eval.queries_per_class, episodes, np.random.default_rng([3, 4, 1]))
    accuracy = [np.mean(np.asarray(predict(support_pool[eps.support[e]], eps.support_labels[e],
                                           query_pool[eps.query[e]]))[eps.query_mask[e]] == eps.query_labels[e][
                                               eps.query_mask[e]]) for e in range(episodes)]
    assert (got.ways, got.shots, got.episodes, got.queries_per_class) == (4, 1, episodes, 15)
    # Float differences between the two convolutions may flip a near-tie: at most one query in all.
    assert abs(got.mean - np.mean(accuracy)) <= 1 / (episodes * 4 * 15) + 1e-9, (got, accuracy)
