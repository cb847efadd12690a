"""A catalogue: every usable image, its class, and the files that were skipped (and why)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file or folder that was not used, with the reason. Never silently dropped."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Images as file paths (decoded by tf.data) or as in-memory uint8 pixels (N, H, W, C).

    Exactly one of `paths` and `pixels` is set. `labels[i]` indexes `class_names`.
    """

    name: str
    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[str, ...] | None = None
    pixels: np.ndarray | None = None
    groups: tuple[str, ...] | None = None  # per image: brand, alphabet, ... (None: the source has none)
    transparent: tuple[bool, ...] | None = None  # per file: a PNG with transparency (composited on white)
    skipped: tuple[Skipped, ...] = ()
    # per image, with data.duplicates='keep': equal ids = byte-identical files (None: all images distinct)
    content_ids: np.ndarray | None = None
    root: str | None = None  # the folder the files came from, named in messages (None: not a file source)
    digests: tuple[str, ...] | None = None  # per file: SHA-1 of its bytes (None: not computed)
    # per image: counter-clockwise quarter turns applied when it is decoded (navee_jax.data.rotations)
    quarter_turns: np.ndarray | None = None
    # per coarser label column (styles.csv's data.label_levels, e.g. masterCategory): each image's value
    levels: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self):
        if (self.paths is None) == (self.pixels is None):
            raise ValueError("a Catalogue holds either paths or pixels")
        n = len(self.paths) if self.paths is not None else len(self.pixels)
        if len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        if self.content_ids is not None and len(self.content_ids) != n:
            raise ValueError(f"{n} images but {len(self.content_ids)} content ids")
        if self.digests is not None and len(self.digests) != n:
            raise ValueError(f"{n} images but {len(self.digests)} digests")
        if self.quarter_turns is not None and len(self.quarter_turns) != n:
            raise ValueError(f"{n} images but {len(self.quarter_turns)} quarter turns")
        for name, values in (self.levels or {}).items():
            if len(values) != n:
                raise ValueError(f"{n} images but {len(values)} {name} values")

    def __len__(self) -> int:
        return len(self.labels)

    def ref(self, i: int) -> str:
        """A human-readable, stable reference to image i (its path, or `name[i]`)."""
        return self.paths[i] if self.paths is not None else f"{self.name}[{i}]"

    def class_indices(self, names: tuple[str, ...]) -> np.ndarray:
        lookup = {n: i for i, n in enumerate(self.class_names)}
        return np.array([lookup[n] for n in names], dtype=np.int64)

    def duplicate_sets(self) -> list[np.ndarray]:
        """Indices of each set of byte-identical images (2 or more), ordered by first index: what was kept."""
        if self.content_ids is None:
            return []
        order = np.argsort(self.content_ids, kind="stable")
        _, starts = np.unique(self.content_ids[order], return_index=True)
        sets = [g for g in np.split(order, starts[1:]) if len(g) >= 2]
        return sorted(sets, key=lambda g: int(g[0]))

    def skipped_by_reason(self) -> dict[str, list[Skipped]]:
        """Skipped files grouped by reason (the reason's text before any ':'), reasons sorted."""
        by_reason: dict[str, list[Skipped]] = {}
        for s in self.skipped:
            by_reason.setdefault(s.reason.split(":")[0], []).append(s)
        return dict(sorted(by_reason.items()))

    def skip_report(self, per_reason: int = 20) -> list[str]:
        """Lines to print: counts by reason, then up to `per_reason` files of each reason (the full
        list goes to skipped_files.json)."""
        if not self.skipped:
            return []
        by_reason = self.skipped_by_reason()
        summary = ", ".join(f"{len(v)} {r}" for r, v in by_reason.items())
        lines = [f"data: skipped {len(self.skipped)} file(s)/folder(s) ({summary}):"]
        for reason, items in by_reason.items():
            lines += [f"  skipped {s.path}: {s.reason}" for s in items[:per_reason]]
            if len(items) > per_reason:
                lines.append(f"  ... and {len(items) - per_reason} more {reason} (all listed in skipped_files.json)")
        return lines
