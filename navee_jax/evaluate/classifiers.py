"""Classifiers for N-way K-shot episodes on fixed embeddings, each run on a whole batch of episodes at once.

Every classifier takes E episodes of identical shapes: support embeddings (E, S, D) with episode-local labels
(E, S) in 0..num_classes-1, and query embeddings (E, Q, D); it returns (E, Q) predicted labels (or (E, Q, C)
probabilities). The per-episode computation is written once and vmapped over episodes inside jit, so a grid
cell of 50 or 600 episodes is one XLA call instead of a Python loop.

The nearest-neighbour and nearest-prototype rules are defined under ties and reproduce scikit-learn (k-NN
notes the one case where scikit-learn's choice follows no rule):

* Distances are squared Euclidean, from `pairwise_distances(..., "squared")`: the same order as Euclidean
  distance, but the square root is skipped because rounding it can merge two distinct distances into a tie.
* k-NN (`knn_predict`, and 1-NN as k=1) takes the k support images with the smallest (distance, support
  index): among equally distant images the earlier one in the support set wins. Votes are counted per class
  and a tie between classes goes to the smallest label, as in scikit-learn. Its
  `KNeighborsClassifier(n_neighbors=k, algorithm="brute")` picks the same neighbours, hence the same
  prediction, whenever the k-th and (k+1)-th nearest distances differ, and always for 1-NN (it keeps the first
  of equally near images too). When they are equal it keeps whichever tied image its bounded max-heap happens
  to hold (the heap compares distances only, and beyond 256 support images the result also depends on its
  thread count), so no index rule reproduces it; tests check both claims on integer-valued and duplicated
  embeddings.
* Nearest prototype (`prototype_predict`) assigns the class whose support mean is nearest, a tie going to the
  smallest label, as `sklearn.neighbors.NearestCentroid` does (identical results whenever the class means are
  exact in float32, e.g. integer embeddings and K a power of two; otherwise both round the means).

`logistic_regression_fit` minimises scikit-learn's L2 multinomial objective, so its predictions agree with
`LogisticRegression(C=C)` up to solver tolerance. `mlp_search` is the study's one-hidden-layer MLP on PCA
features, its hyperparameters chosen on validation queries.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from navee_jax.distances import pairwise_distances

_HIGHEST = jax.lax.Precision.HIGHEST


def squared_distances(query: jax.Array, support: jax.Array) -> jax.Array:
    """(E, Q, S) squared Euclidean distances between each episode's queries (E, Q, D) and support (E, S, D)."""
    return jax.vmap(lambda q, s: pairwise_distances(q, s, "squared"))(query, support)


def nearest_labels(distances: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(Q, k) labels of the k smallest (distance, index) pairs of each row of (Q, S) `distances`, nearest first
    (`lax.top_k` puts the lower index first among equal values; for k=1, argmin, the same rule and several
    times cheaper on CPU)."""
    if k == 1:
        return labels[jnp.argmin(distances, axis=-1)][:, None]
    return labels[jax.lax.top_k(-distances, k)[1]]


@partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_from_distances(distances: jax.Array, support_labels: jax.Array, k: int, num_classes: int) -> jax.Array:
    """(E, Q) majority vote of the k nearest support images under (E, Q, S) `distances`.

    Neighbours are the k smallest (distance, support index) pairs (`lax.top_k` puts the lower index first
    among equal values); a tied vote goes to the smallest label. Needs 1 <= k <= S.
    """
    neighbour_labels = jax.vmap(nearest_labels, in_axes=(0, 0, None))(distances, support_labels, k)  # (E, Q, k)
    if k == 1:
        return neighbour_labels[..., 0]
    votes = jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.int32).sum(axis=-2)
    return jnp.argmax(votes, axis=-1)  # argmax returns the first (smallest) label among equal counts


@partial(jax.jit, static_argnames=("k", "num_classes"))
def knn_predict(support: jax.Array, support_labels: jax.Array, query: jax.Array, k: int,
                num_classes: int) -> jax.Array:
    """(E, Q) k-nearest-neighbour predictions (k=1: 1-NN); ties as in `knn_from_distances`."""
    return knn_from_distances(squared_distances(query, support), support_labels, k, num_classes)


@partial(jax.jit, static_argnames=("num_classes",))
def prototype_predict(support: jax.Array, support_labels: jax.Array, query: jax.Array,
                      num_classes: int) -> jax.Array:
    """(E, Q) label of the nearest class mean (Euclidean); equal distances go to the smallest label.

    A label with no support image in an episode has no prototype and is never predicted.
    """
    onehot = jax.nn.one_hot(support_labels, num_classes, dtype=support.dtype)  # (E, S, C)
    counts = onehot.sum(axis=1)  # (E, C)
    sums = jnp.einsum("esc,esd->ecd", onehot, support, precision=_HIGHEST)
    prototypes = sums / jnp.maximum(counts, 1)[..., None]
    d = squared_distances(query, prototypes)
    return jnp.argmin(jnp.where(counts[:, None, :] > 0, d, jnp.inf), axis=-1)


def _logistic_fit_one(x: jax.Array, y: jax.Array, num_classes: int, C: float, max_iter: int,
                      tol: float) -> tuple[jax.Array, jax.Array]:
    n, d = x.shape
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
    # scikit-learn's objective: mean log-loss + ||W||^2 / (2 C n); the intercept is not penalised.
    l2 = 1.0 / (C * n)

    def loss(params):
        w, b = params
        logits = jnp.matmul(x, w, precision=_HIGHEST) + b
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)) + 0.5 * l2 * jnp.sum(w * w)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    params = (jnp.zeros((d, num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))

    def step(carry):
        params, state, _, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        gmax = jnp.max(jnp.abs(jnp.concatenate([g.ravel() for g in grad])))
        return optax.apply_updates(params, updates), state, gmax, i + 1

    def running(carry):
        return (carry[3] < max_iter) & (carry[2] > tol)

    carry = (params, opt.init(params), jnp.asarray(jnp.inf, x.dtype), jnp.asarray(0))
    params, *_ = jax.lax.while_loop(running, step, carry)
    return params


@partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def logistic_regression_fit(support: jax.Array, support_labels: jax.Array, num_classes: int, C: float = 1.0,
                            max_iter: int = 500, tol: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Per-episode L2-regularised multinomial logistic regression: weights (E, D, C) and biases (E, C).

    Minimises scikit-learn's objective mean(log-loss) + ||W||^2 / (2 C n) (intercept unpenalised) with L-BFGS
    until the largest gradient entry is <= tol or after max_iter iterations. With two classes scikit-learn
    fits a single binary weight vector; the softmax with C/2 is that same model (its optimum puts the two class
    vectors at +-w/2), so 2-way episodes match `LogisticRegression(C=C)` too.
    """
    c_eff = C / 2 if num_classes == 2 else C
    fit = partial(_logistic_fit_one, num_classes=num_classes, C=c_eff, max_iter=max_iter, tol=tol)
    return jax.vmap(fit)(support, support_labels)


@jax.jit
def logistic_regression_proba(weights: jax.Array, biases: jax.Array, query: jax.Array) -> jax.Array:
    """(E, Q, C) class probabilities of (E, Q, D) queries under `logistic_regression_fit`'s parameters."""
    return jax.nn.softmax(jnp.einsum("eqd,edc->eqc", query, weights, precision=_HIGHEST) + biases[:, None], -1)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """One hyperparameter setting of the PCA + MLP classifier."""

    hidden: int
    learning_rate: float
    weight_decay: float
    dropout: float
    pca_dim: int


@dataclasses.dataclass(frozen=True)
class MLPSearch:
    """The hyperparameter grid searched per grid cell, and the training schedule shared by all settings.

    Each episode's MLP trains full-batch on its support set for `steps` AdamW steps from a fixed seed; the
    first `val_fraction` of each class's queries (at least one, always leaving one) pick the setting with
    the best mean validation accuracy (the first in grid order on ties), reported on the other queries.
    """

    hidden: tuple[int, ...] = (64, 256)
    learning_rate: tuple[float, ...] = (1e-3, 1e-2)
    weight_decay: tuple[float, ...] = (0.0, 1e-2)
    dropout: tuple[float, ...] = (0.0, 0.5)
    pca_dim: tuple[int, ...] = (32, 128)
    steps: int = 100
    val_fraction: float = 0.2
    seed: int = 0

    def configs(self) -> list[MLPConfig]:
        """All settings, in grid order (hidden, pca_dim outermost)."""
        return [MLPConfig(h, lr, wd, p, dim) for h, dim, lr, wd, p in itertools.product(
            self.hidden, self.pca_dim, self.learning_rate, self.weight_decay, self.dropout)]


def fit_pca(pool: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (D, dim)) of the principal subspace of `pool` (n, D), in float64.

    `dim` is capped at min(n, D). Fitted once on the whole unlabelled support pool rather than per episode: a
    5-way 1-shot support set spans only 4 dimensions, which would make the PCA size meaningless.
    """
    pool = np.asarray(pool, np.float64)
    mean = pool.mean(axis=0)
    _, _, vt = np.linalg.svd(pool - mean, full_matrices=False)
    return mean, vt[:min(dim, vt.shape[0])].T


def _mlp_logits_one(x, y, q, num_classes, hidden, steps, lr, wd, dropout, key):
    k1, k2, k_drop = jax.random.split(key, 3)
    d = x.shape[1]
    params = {"w1": jax.random.normal(k1, (d, hidden), x.dtype) * jnp.sqrt(2.0 / d),
              "b1": jnp.zeros((hidden,), x.dtype),
              "w2": jax.random.normal(k2, (hidden, num_classes), x.dtype) * jnp.sqrt(1.0 / hidden),
              "b2": jnp.zeros((num_classes,), x.dtype)}
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
    keep = 1.0 - dropout

    def forward(p, inputs, drop_key=None):
        h = jax.nn.relu(jnp.matmul(inputs, p["w1"], precision=_HIGHEST) + p["b1"])
        if drop_key is not None:
            mask = jax.random.bernoulli(drop_key, keep, h.shape)
            h = jnp.where(mask, h / keep, 0.0)
        return jnp.matmul(h, p["w2"], precision=_HIGHEST) + p["b2"]

    def loss(p, drop_key):
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(forward(p, x, drop_key)), axis=-1))

    opt = optax.adamw(lr, weight_decay=wd)

    def step(i, carry):
        p, state = carry
        grads = jax.grad(loss)(p, jax.random.fold_in(k_drop, i))
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
    return forward(params, q)


@partial(jax.jit, static_argnames=("num_classes", "hidden", "steps"))
def mlp_logits(support: jax.Array, support_labels: jax.Array, query: jax.Array, num_classes: int, hidden: int,
               steps: int, learning_rate: jax.Array, weight_decay: jax.Array, dropout: jax.Array,
               seed: int) -> jax.Array:
    """(H, E, Q, C) query logits of MLPs trained on each episode, for H settings of (lr, wd, dropout).

    The three hyperparameters are (H,) arrays vmapped over, so the settings sharing `hidden` compile once.
    Episode e initialises from `fold_in(PRNGKey(seed), e)`, the same for every setting.
    """
    keys = jax.vmap(lambda e: jax.random.fold_in(jax.random.PRNGKey(seed), e))(jnp.arange(support.shape[0]))
    one = partial(_mlp_logits_one, num_classes=num_classes, hidden=hidden, steps=steps)
    per_episode = jax.vmap(lambda lr, wd, p: jax.vmap(
        lambda x, y, q, key: one(x, y, q, lr=lr, wd=wd, dropout=p, key=key))(support, support_labels, query, keys))
    return per_episode(learning_rate, weight_decay, dropout)


def _episode_accuracy(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return ((pred == labels) & mask).sum(axis=-1) / mask.sum(axis=-1)


def mlp_search(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
               val_mask: np.ndarray, test_mask: np.ndarray, num_classes: int, pool: np.ndarray,
               search: MLPSearch) -> tuple[np.ndarray, MLPConfig, float]:
    """Tune and evaluate the PCA + MLP classifier on a batch of episodes.

    support (E, S, D) and query (E, Q, D) are raw embeddings; PCA is fitted on `pool` (the whole support pool,
    unlabelled; queries are never used). Every setting of `search` is trained on every episode; the one with the
    best mean validation accuracy (queries where `val_mask`) is chosen, and its (E,) accuracies on the queries
    where `test_mask` are returned with the setting and its validation accuracy.
    """
    best: tuple[float, MLPConfig, np.ndarray] | None = None
    configs = search.configs()
    for hidden, pca_dim in dict.fromkeys((c.hidden, c.pca_dim) for c in configs):
        group = [c for c in configs if (c.hidden, c.pca_dim) == (hidden, pca_dim)]
        mean, components = fit_pca(pool, pca_dim)
        s = ((support - mean) @ components).astype(np.float32)
        q = ((query - mean) @ components).astype(np.float32)
        hyper = [np.array([getattr(c, f) for c in group], np.float32)
                 for f in ("learning_rate", "weight_decay", "dropout")]
        pred = np.asarray(jnp.argmax(mlp_logits(s, support_labels, q, num_classes, hidden, search.steps,
                                                *hyper, search.seed), axis=-1))
        for config, p in zip(group, pred):
            val = float(_episode_accuracy(p, query_labels, val_mask).mean())
            if best is None or val > best[0]:
                best = (val, config, _episode_accuracy(p, query_labels, test_mask))
    val, config, test = best
    return test, config, val
