"""N-way K-shot episodes on held-out embeddings, classified by 1-nearest-neighbour."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from navee_jax.losses.distances import pairwise_distances


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Indices into the support / query embedding arrays; labels are episode-local (0..N-1)."""

    support: np.ndarray  # (E, N*K)
    support_labels: np.ndarray
    query: np.ndarray  # (E, N*Q)
    query_labels: np.ndarray


def sample_episodes(support_labels: np.ndarray, query_labels: np.ndarray, ways: int, shots: int,
                    queries: int, num_episodes: int, seed: int) -> Episodes:
    """Seeded episodes: N classes, K support images (from the support set), Q queries each."""
    rng = np.random.default_rng([seed, 3, ways, shots])
    classes = np.unique(support_labels)
    s_by_c = {c: np.flatnonzero(support_labels == c) for c in classes}
    q_by_c = {c: np.flatnonzero(query_labels == c) for c in classes}
    s, q = [], []
    for _ in range(num_episodes):
        chosen = rng.choice(classes, size=ways, replace=False)
        s.append(np.concatenate([rng.choice(s_by_c[c], shots, replace=False) for c in chosen]))
        q.append(np.concatenate([rng.choice(q_by_c[c], queries, replace=False) for c in chosen]))
    local = np.arange(ways)
    return Episodes(np.stack(s), np.tile(np.repeat(local, shots), (num_episodes, 1)),
                    np.stack(q), np.tile(np.repeat(local, queries), (num_episodes, 1)))


@jax.jit
def _nn_accuracy(support_emb, query_emb, ep_support, ep_support_labels, ep_query, ep_query_labels):
    def one(s_idx, s_lab, q_idx, q_lab):
        d = pairwise_distances(query_emb[q_idx], support_emb[s_idx])
        return jnp.mean(s_lab[jnp.argmin(d, axis=1)] == q_lab)

    return jax.vmap(one)(ep_support, ep_support_labels, ep_query, ep_query_labels)


def episode_accuracy(support_emb: np.ndarray, query_emb: np.ndarray, episodes: Episodes) -> np.ndarray:
    """(E,) 1-NN accuracy of each episode."""
    return np.asarray(_nn_accuracy(support_emb, query_emb, episodes.support, episodes.support_labels,
                                   episodes.query, episodes.query_labels))


def few_shot_report(support_emb: np.ndarray, support_labels: np.ndarray, query_emb: np.ndarray,
                    query_labels: np.ndarray, ways: int, shots: tuple[int, ...], queries: int,
                    num_episodes: int, seed: int) -> dict[str, dict]:
    """Mean accuracy and 95% confidence half-width for each K; impossible settings say why."""
    classes = np.unique(support_labels)
    report = {}
    for k in shots:
        name = f"{ways}-way {k}-shot"
        min_s = min(int((support_labels == c).sum()) for c in classes)
        min_q = min(int((query_labels == c).sum()) for c in classes)
        q = min(queries, min_q)
        if ways > len(classes) or k > min_s or q < 1:
            report[name] = {"skipped": f"needs {ways} classes with >= {k} support and >= 1 query images; "
                                       f"have {len(classes)} classes, min {min_s} support / {min_q} query"}
            continue
        eps = sample_episodes(support_labels, query_labels, ways, k, q, num_episodes, seed)
        acc = episode_accuracy(support_emb, query_emb, eps)
        report[name] = {"accuracy": float(acc.mean()),
                        "ci95": float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else 0.0,
                        "episodes": num_episodes, "queries_per_class": q}
    return report
