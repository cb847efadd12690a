"""What a catalogue and its split hold, as text lines and a PNG: `python -m navee_jax.data describe`.

The images-per-class histogram is the one of the original study's figure 7 (images per article).
Bins are whole numbers of images: one bin per count when the counts span few values, equal widths
otherwise, and geometric widths when the distribution has a long tail (max >= 16 x min).
"""

from __future__ import annotations

import math

import numpy as np

from navee_jax.data.catalogue import Catalogue
from navee_jax.data.splits import Split

SPLIT_PARTS = ("train", "support", "query", "unused")


def images_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of images of each class 0..num_classes-1 (classes without images count 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=num_classes)


def _geometric(lo: int, hi: int, max_bins: int) -> bool:
    """Counts from lo to hi need more than max_bins bins and have a long tail (max >= 16 x min)."""
    return hi - lo + 1 > max_bins and lo >= 1 and hi >= 16 * lo


def histogram_edges(counts: np.ndarray, max_bins: int = 12) -> np.ndarray:
    """Integer bin edges: bin i holds the counts c with edges[i] <= c < edges[i + 1]; every count
    falls in exactly one of at most `max_bins` bins."""
    counts = np.asarray(counts)
    if counts.size == 0:
        raise ValueError("no classes to make a histogram of")
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    lo, hi = int(counts.min()), int(counts.max())
    span = hi - lo + 1
    if span <= max_bins:
        return np.arange(lo, hi + 2)
    if _geometric(lo, hi, max_bins):  # geometric widths, so that the few big classes don't flatten the rest
        edges = np.unique(np.round(np.geomspace(lo, hi + 1, max_bins + 1)).astype(np.int64))
        edges[0], edges[-1] = lo, hi + 1
        return edges
    width = math.ceil(span / max_bins)
    return np.arange(lo, hi + 1 + width, width)


def histogram_bins(counts: np.ndarray, max_bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(edges, number of classes per bin), see `histogram_edges`."""
    counts = np.asarray(counts)
    edges = histogram_edges(counts, max_bins)
    bin_of = np.searchsorted(edges, counts, side="right") - 1
    return edges, np.bincount(bin_of, minlength=len(edges) - 1)


def _bin_label(lo: int, hi_exclusive: int) -> str:
    return str(lo) if hi_exclusive - lo == 1 else f"{lo}-{hi_exclusive - 1}"


def text_histogram(counts: np.ndarray, max_bins: int = 12, width: int = 40) -> list[str]:
    """One line per bin: `range | ##### n`, n the number of classes with that many images. The longest
    bar is `width` characters; a non-empty bin gets at least one '#'."""
    edges, per_bin = histogram_bins(counts, max_bins)
    labels = [_bin_label(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    label_width = max(len(s) for s in labels)
    top = int(per_bin.max())
    lines = []
    for label, n in zip(labels, per_bin.tolist()):
        bar = "#" * (max(1, round(n * width / top)) if n else 0)
        lines.append(f"{label:>{label_width}} | {bar:<{width}} {n}")
    return lines


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def describe(catalogue: Catalogue, split: Split, max_bins: int = 12) -> list[str]:
    """Lines to print: the catalogue, each split part, duplicates kept, the images-per-class histogram,
    skipped files."""
    num_classes = len(catalogue.class_names)
    lines = [f"catalogue {catalogue.name!r}: {len(catalogue)} images, {num_classes} classes"]
    if catalogue.groups is not None:
        groups = sorted(set(catalogue.groups))
        lines.append(f"  groups: {len(groups)} ({_names(groups)})")
    else:
        lines.append("  groups: none")

    heldout = list(split.heldout_classes)
    lines.append(f"split: {len(heldout)} held-out classes ({_names(heldout, limit=5)})")
    if catalogue.groups is not None:
        seen = {catalogue.groups[i] for i in split.train.tolist()}
        unseen = sorted(set(catalogue.groups) - seen)
        lines.append(f"  groups unseen in training: {_names(unseen) if unseen else 'none'}")
    for part in SPLIT_PARTS:
        idx = getattr(split, part)
        n_classes = len(np.unique(catalogue.labels[idx]))
        lines.append(f"  {part:<8} {n_classes:>6} classes {len(idx):>8} images")
    summary = split.duplicates_summary(catalogue)
    if summary:
        lines.append(f"duplicates: {summary}")

    counts = images_per_class(catalogue.labels, num_classes)
    median = float(np.median(counts))  # a whole number or a half
    median_text = str(int(median)) if median.is_integer() else f"{median:.1f}"
    lines.append(f"images per class ({num_classes} classes): min {int(counts.min())}, "
                 f"median {median_text}, max {int(counts.max())}")
    lines += ["  " + line for line in text_histogram(counts, max_bins)]

    by_reason = catalogue.skipped_by_reason()
    if by_reason:
        summary = ", ".join(f"{len(items)} {reason}" for reason, items in by_reason.items())
        lines.append(f"skipped: {len(catalogue.skipped)} file(s)/folder(s) ({summary})")
        lines += [f"  e.g. {items[0].path}: {items[0].reason}" for items in by_reason.values()]
    else:
        lines.append("skipped: none")
    return lines


def save_histogram_png(counts: np.ndarray, path: str, title: str = "Images per class", max_bins: int = 12) -> None:
    """Writes the images-per-class histogram (same bins as `text_histogram`) to `path` as a PNG (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    edges, per_bin = histogram_bins(counts, max_bins)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Bin [a, b) of whole numbers is drawn from a - 0.5 to b - 0.5, so a one-value bin is centred on it.
    left = edges[:-1] - 0.5
    ax.bar(left, per_bin, width=np.diff(edges), align="edge", edgecolor="black", color="tab:blue")
    if _geometric(int(edges[0]), int(edges[-1]) - 1, max_bins):
        ax.set_xscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel("number of classes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
