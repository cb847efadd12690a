"""Catalogue sources: scikit-learn's bundled digits (the offline default), folder trees of any depth
(Omniglot's `<alphabet>/<character>/*.png` is one), and the Kaggle Fashion Product Images layout.

Every file-based source decodes each image once up front and hashes its bytes: unreadable files and
files of other types are skipped, counted and listed, so that tf.data never meets a bad file. Exact
duplicates are skipped too (the later copy), or with data.duplicates='keep' all kept with a shared
content id, which the split uses so that no image can sit on both sides of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os

import ml_collections
import numpy as np
from PIL import Image

from navee_jax.data.catalogue import Catalogue, Skipped
from navee_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# Formats tf.io.decode_image can decode; anything else is skipped up front with its reason.
_TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP", "WEBP"}
_EXTENSIONS_TEXT = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
DUPLICATES = ("skip", "keep")  # data.duplicates: skip later exact copies, or keep them all


@dataclasses.dataclass(frozen=True)
class _Candidate:
    path: str
    label: str
    group: str | None = None


def digits_catalogue() -> Catalogue:
    """sklearn's 1,797 real 8x8 handwritten digits (values 0..16), as uint8 (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    names = tuple(str(int(n)) for n in digits.target_names)
    return Catalogue(name="digits", labels=digits.target.astype(np.int64), class_names=names, pixels=pixels)


def inspect_image(path: str) -> tuple[str | None, str | None, bool]:
    """(why the file is unusable or None, sha1 of its bytes, whether it is a PNG with transparency).
    Decodes fully, so truncated files fail here and not in tf.data."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as im:
            fmt, mode, info = im.format, im.mode, im.info
            im.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
        return f"unreadable image: {type(e).__name__}: {e}", None, False
    if fmt not in _TF_DECODABLE:
        return f"unsupported format: {fmt}", None, False
    transparent_png = fmt == "PNG" and (mode in ("RGBA", "LA", "PA") or "transparency" in info)
    return None, hashlib.sha1(data).hexdigest(), transparent_png


def _check_duplicates(duplicates: str) -> None:
    if duplicates not in DUPLICATES:
        raise UserError(f"data.duplicates: unknown value {duplicates!r}; use 'skip' or 'keep'")


def _validated_catalogue(name: str, candidates: list[_Candidate], skipped: list[Skipped],
                         num_workers: int = 8, duplicates: str = "skip") -> Catalogue:
    """Decodes and hashes every candidate (in `candidates` order); builds the catalogue of the good ones.
    Exact duplicates: the later copies are skipped ('skip'), or kept with the content id of the first ('keep')."""
    _check_duplicates(duplicates)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        inspected = list(pool.map(inspect_image, [c.path for c in candidates]))
    first_of_hash: dict[str, str] = {}
    content_of_hash: dict[str, int] = {}
    good: list[_Candidate] = []
    transparent: list[bool] = []
    content_ids: list[int] = []
    for c, (why, digest, alpha) in zip(candidates, inspected):
        if why is None and digest in first_of_hash and duplicates == "skip":
            why = f"duplicate: same bytes as {first_of_hash[digest]}"
        if why is not None:
            skipped.append(Skipped(c.path, why))
            continue
        first_of_hash.setdefault(digest, c.path)
        content_ids.append(content_of_hash.setdefault(digest, len(content_of_hash)))
        good.append(c)
        transparent.append(alpha)
    if not good:
        raise UserError(f"data.root: no readable images ({_EXTENSIONS_TEXT}) in {name!r}")
    names = tuple(sorted({c.label for c in good}))
    lookup = {n: i for i, n in enumerate(names)}
    has_groups = any(c.group is not None for c in good)
    return Catalogue(
        name=name,
        labels=np.array([lookup[c.label] for c in good], dtype=np.int64),
        class_names=names,
        paths=tuple(c.path for c in good),
        groups=tuple(c.group or "" for c in good) if has_groups else None,
        transparent=tuple(transparent),
        skipped=tuple(skipped),
        content_ids=np.array(content_ids, dtype=np.int64) if duplicates == "keep" else None,
    )


def _check_root(root: str | None, layout: str) -> None:
    if not root:
        raise UserError(f"data.root is not set: pass --config.data.root=/path/to/{layout}")
    if not os.path.isdir(root):
        raise UserError(f"data.root: folder {root!r} does not exist; point --config.data.root at {layout}")


def folder_catalogue(root: str, group_level: int = -1, duplicates: str = "skip") -> Catalogue:
    """A tree `root/.../<class>/<image>` of any depth: every folder holding images is a class, named by
    its path relative to root; `group_level` >= 0 names the group by that path component (e.g. 0 for
    `<brand>/<article>`, 1 for Omniglot's `<set>/<alphabet>/<character>`). `duplicates`: see
    `_validated_catalogue`."""
    _check_root(root, "root/<class>/<image> (any depth)")
    skipped: list[Skipped] = []
    candidates: list[_Candidate] = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        rel = os.path.relpath(folder, root)
        images = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        others = sorted(f for f in files if f not in images)
        if rel == ".":
            skipped += [Skipped(os.path.join(folder, f), "not in a class folder (expected root/<class>/<image>)")
                        for f in sorted(files)]
            continue
        if not images and not subfolders:
            skipped.append(Skipped(folder, f"empty class folder: no {_EXTENSIONS_TEXT} images"))
        skipped += [Skipped(os.path.join(folder, f), f"unsupported file: not {_EXTENSIONS_TEXT}") for f in others]
        parts = rel.split(os.sep)
        group = parts[group_level] if 0 <= group_level < len(parts) - 1 else None
        candidates += [_Candidate(os.path.join(folder, f), rel, group) for f in images]
    return _validated_catalogue(os.path.basename(os.path.normpath(root)), candidates, skipped,
                                duplicates=duplicates)


def read_styles_csv(path: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, numbers of malformed lines). The original Kaggle file's last column
    (productDisplayName) contains unquoted commas, so each line is split at most len(header)-1 times."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().strip().split(",")
        rows, malformed = [], []
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split(",", len(header) - 1)
            if len(fields) == len(header):
                rows.append(fields)
            elif line.strip():
                malformed.append(number)
    return header, rows, malformed


def styles_catalogue(root: str, label_column: str, group_column: str = "", duplicates: str = "skip") -> Catalogue:
    """Kaggle "Fashion Product Images": `root/styles.csv` (id, ..., label columns) and `root/images/<id>.jpg`.
    Rows whose image is missing are skipped and counted (most rows of the public copies have none).
    `duplicates`: see `_validated_catalogue` (some product ids share one photo)."""
    _check_root(root, "a folder with styles.csv and images/<id>.jpg")
    csv_path = os.path.join(root, "styles.csv")
    if not os.path.isfile(csv_path):
        raise UserError(f"data.root: {csv_path!r} not found (the Kaggle layout is styles.csv + images/<id>.jpg)")
    header, rows, malformed = read_styles_csv(csv_path)
    for column in ("id", label_column) + ((group_column,) if group_column else ()):
        if column not in header:
            raise UserError(f"data.label_column / data.group_column: column {column!r} is not in {csv_path} "
                            f"(columns: {header})")
    col = {c: i for i, c in enumerate(header)}
    skipped = [Skipped(f"{csv_path}:{n}", "malformed row: wrong number of fields") for n in malformed]
    candidates = []
    for row in rows:
        path = os.path.join(root, "images", f"{row[col['id']].strip()}.jpg")
        if not os.path.isfile(path):
            skipped.append(Skipped(path, "missing image for a styles.csv row"))
        elif not row[col[label_column]].strip():
            skipped.append(Skipped(path, f"empty {label_column}"))
        else:
            group = row[col[group_column]].strip() if group_column else None
            candidates.append(_Candidate(path, row[col[label_column]].strip(), group))
    return _validated_catalogue(os.path.basename(os.path.normpath(root)), candidates, skipped,
                                duplicates=duplicates)


def load_catalogue(data: ml_collections.ConfigDict) -> Catalogue:
    """The catalogue named by `data.source`."""
    _check_duplicates(data.duplicates)  # for every source, though only file sources hash their images
    if data.source == "digits":
        return digits_catalogue()
    if data.source == "folder":
        return folder_catalogue(data.root, data.group_level, data.duplicates)
    if data.source == "styles_csv":
        return styles_catalogue(data.root, data.label_column, data.group_column, data.duplicates)
    if data.source.startswith("tfds:"):
        from navee_jax.data.tfds_source import tfds_catalogue

        return tfds_catalogue(data.source[len("tfds:"):], data.tfds_split, data.tfds_label_key, data.tfds_group_key,
                              data.tfds_data_dir)
    raise UserError(f"data.source: unknown source {data.source!r}; use 'digits', 'folder', 'styles_csv' or "
                    f"'tfds:<name>'")
