"""Gallery search for recognition: the jitted chunked exact search vs scikit-learn, and FAISS, side by side.

    python bench/recognize.py [--gallery 100000] [--per-article 5] [--queries 1000] [--dim 256] [--k 5]
                              [--noise 1.0] [--seed 0]

Reads nothing from disk: `--gallery` random L2-normalised embeddings (`--dim`-d), `--per-article` per
article (article centre N(0, 1) per coordinate, images centre + N(0, noise^2), then normalised, as a trained
embedding with model.normalize gives), and `--queries` new photos of random enrolled articles made the same way.

(a) Top-k reference images of every query: `navee_jax.recognize.search.ExactIndex.search` (chunked, jitted)
    vs `sklearn.neighbors.NearestNeighbors(algorithm="brute").kneighbors`, both exact, on the same data, both
    with their default threads. Counts queries with the same top-1 image.
(b) Predictions (top-k articles, nearest-reference rule, as `Recognizer.predict` after embedding):
    `Gallery.search(mode="nn")`, which searches (k - 1) * per_article + 1 images and keeps the first image of
    each article.
(c) With FAISS installed (pip install faiss-cpu): `search.FaissIndex` (IVF-Flat, 4 sqrt(n) cells): build time,
    then for 16 (the default), 64 and 256 cells probed: queries per second and recall@1 against the exact
    search (the fraction of queries whose top-1 image is the exact search's). Skipped with the reason otherwise.

Timings: index build once (not counted in the rates), then the median of three identical search calls after
one warm-up call (which includes XLA compilation for navee_jax).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from navee_jax.recognize.gallery import Gallery  # noqa: E402
from navee_jax.recognize.search import ExactIndex, FaissIndex, faiss_available  # noqa: E402


def make_data(n: int, per_article: int, queries: int, dim: int, noise: float, seed: int):
    """(gallery (n, d), article of each row (n,), queries (q, d), true article of each query (q,))."""
    rng = np.random.default_rng(seed)
    articles = -(-n // per_article)
    centres = rng.normal(size=(articles, dim)).astype(np.float32)
    labels = np.repeat(np.arange(articles), per_article)[:n]

    def photos(of):
        x = centres[of] + noise * rng.normal(size=(len(of), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q_labels = rng.integers(0, articles, queries)
    return photos(labels), labels, photos(q_labels), q_labels


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    fn()  # warm-up (compilation)
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--per-article", type=int, default=5)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import jax
    import sklearn

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}, scikit-learn {sklearn.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}")
    gallery, labels, queries, q_labels = make_data(a.gallery, a.per_article, a.queries, a.dim, a.noise, a.seed)
    print(f"gallery {len(gallery):,} x {a.dim}-d ({labels.max() + 1:,} articles x {a.per_article}), "
          f"{len(queries):,} queries, top-{a.k}")

    t = time.perf_counter()
    exact = ExactIndex(gallery)
    build_exact = time.perf_counter() - t
    t_exact, (_, idx) = timed(lambda: exact.search(queries, a.k))
    nn = NearestNeighbors(n_neighbors=a.k, algorithm="brute").fit(gallery)
    t_sk, (_, sk_idx) = timed(lambda: nn.kneighbors(queries))
    same = int(np.sum(idx[:, 0] == sk_idx[:, 0]))
    print("\n(a) top-k reference images, exact")
    print(f"{'':34s} {'queries/s':>10s} {'time':>9s}")
    print(f"{'navee_jax ExactIndex (chunked)':34s} {len(queries) / t_exact:10.0f} {t_exact:8.3f}s"
          f"  (index build {build_exact:.2f}s)")
    print(f"{'sklearn NearestNeighbors brute':34s} {len(queries) / t_sk:10.0f} {t_sk:8.3f}s")
    print(f"ratio navee_jax / sklearn: {t_sk / t_exact:.2f}x; same top-1: {same}/{len(queries)}")

    g = Gallery(a.dim, {})
    g.add(gallery, [str(x) for x in labels])
    g.search(queries[:1], a.k)  # builds the gallery's exact index
    t_pred, (arts, _) = timed(lambda: g.search(queries, a.k, mode="nn"))
    top1 = np.array([int(g.articles[i]) for i in arts[:, 0]])
    print(f"\n(b) predictions (top-{a.k} articles, nearest reference image): {len(queries) / t_pred:.0f} "
          f"predictions/s ({t_pred:.3f}s); top-1 article correct for {np.mean(top1 == q_labels):.4f} of queries")

    print("\n(c) FAISS IVF-Flat")
    if not faiss_available():
        print("skipped: FAISS is not installed (pip install faiss-cpu, or pip install -e '.[faiss]')")
        return
    t = time.perf_counter()
    index = FaissIndex(gallery, seed=a.seed)
    build = time.perf_counter() - t
    print(f"{index.nlist} cells, built in {build:.2f}s")
    print(f"{'cells probed':>12s} {'queries/s':>10s} {'time':>9s} {'vs exact':>9s} {'recall@1 vs exact':>18s}")
    for nprobe in (16, 64, 256):
        index.index.nprobe = nprobe
        t_faiss, (_, f_idx) = timed(lambda: index.search(queries, a.k))
        recall = float(np.mean(f_idx[:, 0] == idx[:, 0]))
        print(f"{nprobe:12d} {len(queries) / t_faiss:10.0f} {t_faiss:8.3f}s {t_exact / t_faiss:8.1f}x {recall:18.4f}")


if __name__ == "__main__":
    main()
