"""Figures of a classifier's test predictions (the study's figure 14 and a confusion matrix) and of the
layer-removal grid (its figure 15)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from navee_jax.evaluate.figures import accuracy_heatmap, new_figure, save_figure, show_image


def confusion_matrix_figure(counts: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Rows: true class, columns: predicted, each row divided by its count (rows without test images blank);
    the diagonal is each class's accuracy."""
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    n = len(class_names)
    side = min(4 + 0.16 * n, 18)
    fig = new_figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(rates), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fontsize = max(3.5, min(8, 400 / max(n, 1)))
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows sum to 1)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="fraction of the true class")
    fig.tight_layout()
    return save_figure(fig, path)


def misclassified_examples(images: np.ndarray, true_names: Sequence[str], predicted_names: Sequence[str],
                           probabilities: Sequence[float], path: str, columns: int = 6, title: str = "") -> str:
    """A grid of images with their true and predicted labels (and the predicted probability)."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = new_figure(2.0 * columns, 2.3 * rows + (0.3 if title else 0.0))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        show_image(ax, images[i])
        ax.set_title(f"true: {true_names[i]}\npred: {predicted_names[i]} ({probabilities[i]:.2f})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def layer_removal_heatmap(cells: Mapping[tuple[int, int], np.ndarray], path: str, title: str = "") -> str:
    """Rows: layers removed (n), columns: images per class (K); each cell the mean 1-NN accuracy over seeds
    and its 95% interval (1.96 std / sqrt(seeds))."""
    grid = [{"ways": n, "shots": k, "mean": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(len(acc)))}
            for (n, k), acc in sorted(cells.items())]
    return accuracy_heatmap(grid, path, title or "1-NN accuracy by layers removed", rows="n (top layers removed)",
                            columns="K (images per class)")
