"""PNG figures for the evaluation report, drawn from plain arrays.

Every writer builds its own matplotlib Figure on the Agg canvas (never pyplot: no display, no global state
shared with other code), draws at a fixed size and dpi, and draws only what its arguments and seed
determine, so the same inputs give byte-identical files (PNG metadata carries no software version).

The N-way K-shot grid, here and in report.py, is a list of cells, one per (ways, shots) setting, in the dict
form of `navee_jax.evaluate.records.FewShotCell` (`to_dict`), as report.json stores it:
    {"ways": 5, "shots": 1, "mean": 0.80, "ci95": 0.01, ...}        evaluated (extra keys are ignored)
    {"ways": 20, "shots": 5, "skipped": "why", ...}                not possible on this data, with the reason
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 100
SKIPPED_FACE = "#d9d9d9"  # skipped grid cells: light grey, hatched in a darker grey, marked "n/a"
SKIPPED_HATCH = "#8c8c8c"
MAX_CLASSES = 10  # pca_scatter: tab10 has 10 colours; beyond that classes cannot be told apart
CORRECT_COLOUR, WRONG_COLOUR = "#1a9641", "#d7191c"
BEST_COLOUR = "#e66101"  # sweep_curve: the best setting


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _grid_axes(grid: Sequence[Mapping]) -> tuple[list[int], list[int]]:
    ways = sorted({int(c["ways"]) for c in grid})
    shots = sorted({int(c["shots"]) for c in grid})
    return ways, shots


def accuracy_heatmap(grid: Sequence[Mapping], path: str, title: str = "", rows: str = "N (ways)",
                     columns: str = "K (shots)") -> str:
    """N (rows) x K (columns) heatmap of mean accuracy (cells: module docstring), the numbers and 95% CI
    written in the cells. The colour scale is fixed to [0, 1] so heatmaps of different methods compare
    by eye; skipped cells are grey, hatched and marked "n/a", settings absent from `grid` plain grey."""
    if not grid:
        raise ValueError("accuracy_heatmap: empty grid")
    ways, shots = _grid_axes(grid)
    acc = np.full((len(ways), len(shots)), np.nan)
    fig = new_figure(2.2 + 0.95 * len(shots), 1.3 + 0.6 * len(ways))
    ax = fig.add_subplot()
    ax.set_facecolor(SKIPPED_FACE)
    for cell in grid:
        if "skipped" not in cell:
            acc[ways.index(int(cell["ways"])), shots.index(int(cell["shots"]))] = cell["mean"]
    image = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for cell in grid:
        i, j = ways.index(int(cell["ways"])), shots.index(int(cell["shots"]))
        if "skipped" in cell:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor=SKIPPED_HATCH,
                                   hatch="//", linewidth=0))
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=9, color="black")
        else:
            ci = cell.get("ci95")
            text = f"{cell['mean']:.2f}" + (f"\n±{ci:.2f}" if ci is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cell["mean"] < 0.6 else "black")
    ax.set_xticks(range(len(shots)), [str(k) for k in shots])
    ax.set_yticks(range(len(ways)), [str(n) for n in ways])
    ax.set_xlabel(columns)
    ax.set_ylabel(rows)
    ax.set_title(title or "N-way K-shot accuracy (1-NN)", fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return save_figure(fig, path)


def distance_histograms(distances_pos: np.ndarray, distances_neg: np.ndarray, path: str, title: str = "",
                        bins: int = 50) -> str:
    """Same-class vs different-class pair distances, overlaid on shared bins and density-normalised, so
    the overlap of the two (what a nearest-neighbour rule gets wrong) is visible whatever the pair counts."""
    pos, neg = np.asarray(distances_pos, np.float64), np.asarray(distances_neg, np.float64)
    if len(pos) + len(neg) == 0:
        raise ValueError("distance_histograms: no distances")
    edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=bins)
    fig = new_figure(5.5, 3.5)
    ax = fig.add_subplot()
    for d, label, colour in ((pos, "same class", "tab:blue"), (neg, "different class", "tab:orange")):
        if len(d):
            ax.hist(d, bins=edges, density=True, alpha=0.55, color=colour,
                    label=f"{label} (n={len(d):,}, median {np.median(d):.3f})")
    ax.set_xlabel("Euclidean distance")
    ax.set_ylabel("density")
    ax.set_title(title or "Held-out pair distances", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) projection on the first two principal axes and their share of the variance. Each axis's sign
    is fixed (largest loading positive) so that LAPACK's arbitrary signs cannot flip the picture."""
    x = x.astype(np.float64) - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = np.zeros((2, x.shape[1]))
    axes[:min(2, len(vt))] = vt[:2]
    axes *= np.where(axes[np.arange(2), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    var = s**2
    share = np.zeros(2)
    share[:min(2, len(var))] = var[:2] / var.sum() if var.sum() > 0 else 0.0
    return x @ axes.T, share


def pca_scatter(embeddings: np.ndarray, labels: np.ndarray, path: str, num_classes: int = 10, seed: int = 0,
                class_names: Sequence[str] | None = None, title: str = "") -> str:
    """2-D PCA of the images of up to `num_classes` (<= 10) held-out classes drawn with `seed`, one colour
    per class: whether classes never seen in training form separate clusters. PCA is fitted on the drawn
    classes only, so the axes show their spread, not that of classes left out of the picture.
    `class_names[label]` names a class in the legend (else its label number)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"pca_scatter: num_classes={num_classes}: must be 1..{MAX_CLASSES} (one colour each)")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(classes, size=min(num_classes, len(classes)), replace=False))
    mask = np.isin(labels, chosen)
    points, share = _pca_2d(np.asarray(embeddings)[mask])
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    colours = [to_rgb(f"C{k}") for k in range(MAX_CLASSES)]
    for k, c in enumerate(chosen):
        sel = labels[mask] == c
        name = str(class_names[c]) if class_names is not None else str(c)
        ax.scatter(points[sel, 0], points[sel, 1], s=14, color=colours[k], linewidths=0,
                   label=name if len(name) <= 24 else name[:23] + "…")
    ax.set_xlabel(f"PC 1 ({100 * share[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f}% of variance)")
    ax.set_title(title or f"PCA of {len(chosen)} held-out classes", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(history: Sequence[Mapping], path: str, title: str = "") -> str:
    """Training loss and held-out mAP per epoch (entries {"epoch", "loss", "map"} as the trainer writes to
    metrics.json; a missing or None value is left out), with the best-mAP epoch marked: a run that
    overfits the base classes shows the loss falling while held-out mAP turns down."""
    if not history:
        raise ValueError("training_curves: empty history")
    fig = new_figure(8.0, 3.2)
    for n, (key, label) in enumerate((("loss", "training loss"), ("map", "held-out mAP"))):
        ax = fig.add_subplot(1, 2, n + 1)
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None and np.isfinite(h[key])]
        if points:
            x, y = np.array(points, dtype=np.float64).T
            ax.plot(x, y, marker="o", markersize=3, color="tab:blue" if key == "loss" else "tab:green")
            if key == "map":
                best = int(np.argmax(y))
                ax.axvline(x[best], color="grey", linestyle=":", linewidth=1)
                ax.set_title(f"best {y[best]:.4f} at epoch {x[best]:g}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_points(values: Sequence, scores: Sequence[float | None]) -> tuple[list, np.ndarray, str]:
    """A one-key sweep's settings in the order to draw them and the x axis's scale: numbers ascending, "log" when
    all are positive and span a factor of 10 or more (learning rates), else "linear"; anything else (names,
    tuples) as given, "categorical" (evenly spaced ticks). A setting without a score (None) is NaN."""
    scores = np.array([np.nan if s is None else s for s in scores], np.float64)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return list(values), scores, "categorical"
    order = np.argsort(np.asarray(values, np.float64), kind="stable")
    ordered = [values[i] for i in order]
    return ordered, scores[order], "log" if min(ordered) > 0 and max(ordered) >= 10 * min(ordered) else "linear"


def sweep_curve(key: str, values: Sequence, scores: Sequence[float | None], path: str, metric: str = "held-out mAP",
                title: str = "", initial: Sequence[float | None] | None = None) -> str:
    """The best `metric` of each setting of a one-key sweep (the study's figures 24-29), the best setting marked
    in BEST_COLOUR; `initial`, each setting's network before training, dashed grey beside it."""
    if not values:
        raise ValueError("sweep_curve: no settings")
    drawn, y, scale = sweep_points(list(values), scores)
    x = np.arange(len(drawn), dtype=np.float64) if scale == "categorical" else np.asarray(drawn, np.float64)
    fig = new_figure(5.0, 3.4)
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", color="tab:blue", label="trained (best epoch)")
    if initial is not None:
        ax.plot(x, sweep_points(list(values), initial)[1], marker=".", color="grey", linestyle="--",
                label="at initialisation")
        ax.legend(fontsize=8)
    heading = title or f"{metric} against {key}"
    if np.isfinite(y).any():
        best = int(np.nanargmax(y))
        ax.plot([x[best]], [y[best]], marker="o", markersize=10, color=BEST_COLOUR, linestyle="none")
        heading += f"\nbest {y[best]:.4f} at {drawn[best]!r}"
    if scale == "categorical":
        ax.set_xticks(x, [str(v) for v in drawn], fontsize=7, rotation=15)
    else:
        ax.set_xscale(scale)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.set_title(heading, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def nearest_neighbours(query_images: np.ndarray, neighbour_images: np.ndarray, distances: np.ndarray,
                       correct: np.ndarray, path: str, title: str = "") -> str:
    """One row per query: the query, then its k nearest support images with their distances, framed green
    when of the query's class and red when not: what the 1-NN rule sees and where it errs.

    query_images (Q, S, S, C) uint8; neighbour_images (Q, k, S, S, C); distances and correct (Q, k).
    """
    q, k = np.asarray(distances).shape
    fig = new_figure(1.15 * (k + 1), 1.25 * q + (0.3 if title else 0.0))
    axes = fig.subplots(q, k + 1, squeeze=False)
    for r in range(q):
        show_image(axes[r, 0], query_images[r])
        axes[r, 0].set_title("query", fontsize=8)
        for c in range(k):
            ax = axes[r, c + 1]
            show_image(ax, neighbour_images[r, c])
            ax.set_title(f"{distances[r, c]:.3f}", fontsize=8)
            for spine in ax.spines.values():
                spine.set_color(CORRECT_COLOUR if correct[r, c] else WRONG_COLOUR)
                spine.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def nearest_neighbour_examples(query_emb: np.ndarray, query_labels: np.ndarray, support_emb: np.ndarray,
                               support_labels: np.ndarray, k: int = 5, num_queries: int = 6,
                               seed: int = 0) -> dict[str, np.ndarray]:
    """The inputs of `nearest_neighbours` for `num_queries` queries drawn with `seed`: {"query": (Q,) and
    "neighbours": (Q, k) indices into the query / support arrays, "distances" and "correct": (Q, k)}.
    Only the drawn queries' distances are computed (Q x support), never the full query x support matrix."""
    rng = np.random.default_rng(seed)
    query = np.sort(rng.choice(len(query_emb), size=min(num_queries, len(query_emb)), replace=False))
    diff = np.asarray(query_emb, np.float64)[query, None, :] - np.asarray(support_emb, np.float64)[None]
    d = np.sqrt(np.square(diff).sum(axis=-1))
    neighbours = np.argsort(d, axis=1, kind="stable")[:, :k]
    return {"query": query, "neighbours": neighbours, "distances": np.take_along_axis(d, neighbours, axis=1),
            "correct": np.asarray(support_labels)[neighbours] == np.asarray(query_labels)[query, None]}


def _positive_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n pairs drawn uniformly (with replacement) from all unordered pairs of distinct same-class images."""
    order = np.argsort(labels, kind="stable")
    _, start, size = np.unique(labels[order], return_index=True, return_counts=True)
    weight = size * (size - 1.0)
    if weight.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    block = rng.choice(len(size), size=n, p=weight / weight.sum())
    a = rng.integers(0, size[block])
    b = rng.integers(0, size[block] - 1)
    b = np.where(b >= a, b + 1, b)
    return order[start[block] + a], order[start[block] + b]


def _negative_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n pairs drawn uniformly (with replacement) from all pairs of different-class images, by rejection:
    each round draws enough uniform pairs to expect n of different classes."""
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p_diff = 1.0 - np.sum((counts / len(labels)) ** 2)
    i_parts, j_parts, have = [], [], 0
    while have < n:
        draw = int(1.2 * (n - have) / p_diff) + 16
        i, j = rng.integers(0, len(labels), draw), rng.integers(0, len(labels), draw)
        keep = labels[i] != labels[j]
        i_parts.append(i[keep])
        j_parts.append(j[keep])
        have += int(keep.sum())
    return np.concatenate(i_parts)[:n], np.concatenate(j_parts)[:n]


def _distances(emb: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = [np.sqrt(np.square(emb[i[s:s + chunk]].astype(np.float64) - emb[j[s:s + chunk]]).sum(axis=1))
           for s in range(0, len(i), chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def pair_distances(emb: np.ndarray, labels: np.ndarray, max_pairs: int = 20_000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(same-class, different-class) Euclidean pair distances for `distance_histograms`.

    When the set has at most `max_pairs` unordered pairs, all of them (exact histograms); otherwise
    `max_pairs` of each kind drawn uniformly from that kind's pairs with `seed`. Memory stays
    O(max_pairs), never N x N, so a held-out set of any size can be described.
    """
    emb, labels = np.asarray(emb), np.asarray(labels)
    n = len(labels)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        same = labels[i] == labels[j]
        return _distances(emb, i[same], j[same]), _distances(emb, i[~same], j[~same])
    rng = np.random.default_rng(seed)
    positive = _positive_pairs(labels, max_pairs, rng)
    negative = _negative_pairs(labels, max_pairs, rng)
    return _distances(emb, *positive), _distances(emb, *negative)
