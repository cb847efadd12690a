"""The evaluation suite vs the scikit-learn loops it replaces, side by side in one run, on the CPU.

    python bench/episodes.py [--classes 100] [--per-class 20] [--dim 256] [--episodes 50] [--seed 0]

Reads nothing from disk: random embeddings of `--classes` classes x `--per-class` images (`--dim`-d; class
centres N(0, 0.3^2), images centre + N(0, 1)), the first half of each class's images the support pool, the
rest the query pool. Values are rounded to multiples of 1/16, so every squared distance is exact in float32
and float64 alike: both sides then rank identically (ties included) and the comparison can demand identical
results instead of agreement up to rounding.

(a) The full default few-shot grid, N in {2, 5, 10, 20, 50} x K in {1, 2, 3, 5, 10}, `--episodes` episodes
    per cell, 1-NN: `few_shot_grid` (`navee_jax.evaluate.nearest`: one ranked table, then one compiled loop
    over each cell's episodes) vs a loop fitting sklearn's KNeighborsClassifier(n_neighbors=1,
    algorithm="brute") per episode on the same episodes. Asserts identical per-cell accuracies and CIs. Two
    ratios: the whole call (both sides sample the episodes with the same code, timed on its own and added to
    the loop) and the classification alone (each side minus that sampling time). The loop runs with
    sklearn's thread pools limited to one thread (threadpoolctl), its fastest setting for many small
    problems: on an idle machine its default two OpenMP threads are no faster, and while anything else runs
    on the two cores they make the loop ~20x slower, which would flatter the ratio.
(b) Retrieval mAP of every query against the support pool: `retrieval_metrics` vs a loop calling
    sklearn.metrics.average_precision_score per query on float64 distances (one thread too, though it barely
    uses threads). Asserts equal mAP (to 1e-12).

"cold" timings include XLA compilation (the first call in the process); "warm" ones are the median of three
further identical calls, as in every held-out evaluation after the first during training. Prints the ratios
sklearn / navee_jax.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from navee_jax.data.episodes import Episodes, EpisodeSampler  # noqa: E402
from navee_jax.evaluate.fewshot import few_shot_grid  # noqa: E402
from navee_jax.evaluate.retrieval import retrieval_metrics  # noqa: E402

WAYS, SHOTS, QUERIES = (2, 5, 10, 20, 50), (1, 2, 3, 5, 10), 15


def make_embeddings(classes: int, per_class: int, dim: int, seed: int):
    """(support, support_labels, query, query_labels), float32 on a 1/16 grid."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.3, size=(classes, 1, dim))
    emb = np.round((centres + rng.normal(size=(classes, per_class, dim))) * 16) / 16
    half = per_class // 2
    labels = np.arange(classes)
    return (emb[:, :half].reshape(-1, dim).astype(np.float32), np.repeat(labels, half),
            emb[:, half:].reshape(-1, dim).astype(np.float32), np.repeat(labels, per_class - half))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cold_and_warm(fn, repeats: int = 3):
    """(result, first call's seconds, median seconds of `repeats` further calls)."""
    out, cold = timed(fn)
    return out, cold, statistics.median(timed(fn)[1] for _ in range(repeats))


def sample_grid(s_lab, q_lab, episodes: int, seed: int) -> dict[tuple[int, int], Episodes]:
    """The episodes `few_shot_grid` draws for every cell (the same code it runs)."""
    sampler = EpisodeSampler(s_lab, q_lab)
    return {(n, k): sampler.sample(n, k, QUERIES, episodes, np.random.default_rng([seed, n, k]))
            for n in WAYS for k in SHOTS}


def sklearn_grid(s, q, cells: dict[tuple[int, int], Episodes], episodes: int) -> dict[str, dict[str, float]]:
    """Per-episode KNeighborsClassifier loop over the episodes of every cell: {"N-way K-shot": {"mean", "ci95"}}."""
    report = {}
    for (n, k), eps in cells.items():
        acc = np.empty(episodes)
        for e in range(episodes):
            clf = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
            pred = clf.fit(s[eps.support[e]], eps.support_labels[e]).predict(q[eps.query[e]])
            mask = eps.query_mask[e]
            acc[e] = np.sum((pred == eps.query_labels[e]) & mask) / mask.sum()
        report[f"{n}-way {k}-shot"] = {"mean": float(acc.mean()),
                                       "ci95": float(1.96 * acc.std(ddof=1) / np.sqrt(episodes))}
    return report


def sklearn_map(q, q_lab, s, s_lab) -> float:
    s64 = s.astype(np.float64)
    aps = [average_precision_score(s_lab == lab, -np.sqrt(((s64 - x.astype(np.float64)) ** 2).sum(axis=1)))
           for x, lab in zip(q, q_lab)]
    return float(np.mean(aps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s, s_lab, q, q_lab = make_embeddings(args.classes, args.per_class, args.dim, args.seed)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; support {s.shape}, query {q.shape}; "
          f"{len(WAYS) * len(SHOTS)} cells x {args.episodes} episodes")

    def ours():
        return few_shot_grid(s, s_lab, q, q_lab, WAYS, SHOTS, QUERIES, args.episodes, args.seed)

    cells_list, cold, warm = cold_and_warm(ours)
    grid = {c.name: c for c in cells_list}
    cells, _, sampling = cold_and_warm(lambda: sample_grid(s_lab, q_lab, args.episodes, args.seed))
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # "more than 50% unique classes" on 1-shot support sets
        reference, loop = timed(lambda: sklearn_grid(s, q, cells, args.episodes))
    print("\n(a) 1-NN episode grid: accuracy navee_jax | sklearn")
    print("      " + "".join(f"{k:>10}-shot" for k in SHOTS))
    for n in WAYS:
        row = [f"{grid[f'{n}-way {k}-shot'].mean:.4f}|{reference[f'{n}-way {k}-shot']['mean']:.4f}"
               for k in SHOTS]
        print(f"{n:>2}-way " + " ".join(f"{c:>14}" for c in row))
    for name, ref in reference.items():
        got = grid[name]
        assert (got.mean, got.ci95) == (ref["mean"], ref["ci95"]), (name, got, ref)
    print(f"identical accuracies and CIs in all {len(reference)} cells")
    print(f"sampling the episodes {sampling * 1e3:.1f} ms (the same code on both sides)")
    print(f"whole grid: navee_jax {cold * 1e3:.1f} ms cold, {warm * 1e3:.1f} ms warm; sklearn loop + sampling "
          f"{loop + sampling:.2f} s; ratio {(loop + sampling) / cold:.0f}x cold, {(loop + sampling) / warm:.0f}x warm")
    print(f"classification alone: navee_jax {(warm - sampling) * 1e3:.1f} ms warm; sklearn loop {loop:.2f} s; "
          f"ratio {loop / (warm - sampling):.0f}x warm")

    def ours_map():
        return retrieval_metrics(q, q_lab, s, s_lab, ks=())["map"]

    got, cold, warm = cold_and_warm(ours_map)
    with threadpool_limits(1):
        want, loop = timed(lambda: sklearn_map(q, q_lab, s, s_lab))
    assert abs(got - want) <= 1e-12, (got, want)
    print(f"\n(b) mAP of {len(q)} queries over {len(s)} support images: navee_jax {got:.12f}, sklearn {want:.12f} "
          f"(|diff| {abs(got - want):.1e})")
    print(f"navee_jax {cold:.3f} s cold, {warm:.3f} s warm; sklearn loop {loop:.2f} s; "
          f"ratio {loop / cold:.0f}x cold, {loop / warm:.0f}x warm")


if __name__ == "__main__":
    main()
