"""Catalogue sources: scikit-learn's bundled digits (the offline default), folder trees of any depth
(Omniglot's `<alphabet>/<character>/*.png` is one; symlinked folders and files are followed), and the Kaggle
Fashion Product Images layout (styles.csv read per RFC 4180, with the original file's unquoted commas).

Every file-based source decodes each image once up front and hashes its bytes: unreadable files and
files of other types are skipped, counted and listed, so that tf.data never meets a bad file. Exact
duplicates are skipped too (the later copy), or with data.duplicates='keep' all kept with a shared
content id, which the split uses so that no image can sit on both sides of it.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import os
from typing import Iterator

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
# Free-text last columns of styles.csv: the original Kaggle file leaves commas in productDisplayName unquoted
# (`...,Casual,Men Blue T-shirt, Slim`), so an unquoted row with too many fields has the extra ones joined
# back into it. Any other last column gets no such help: a row of the wrong length is malformed.
FREE_TEXT_LAST_COLUMNS = ("productDisplayName",)


@dataclasses.dataclass(frozen=True)
class _Candidate:
    path: str
    label: str
    group: str | None = None
    levels: tuple[str, ...] = ()  # the image's values in the catalogue's `level_names` columns


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


def _validated_catalogue(root: str, candidates: list[_Candidate], skipped: list[Skipped],
                         num_workers: int = 8, duplicates: str = "skip", option: str = "data.root",
                         level_names: tuple[str, ...] = ()) -> Catalogue:
    """Decodes and hashes every candidate (in `candidates` order); builds the catalogue of the good ones.
    Exact duplicates: the later copies are skipped ('skip'), or kept with the content id of the first ('keep').
    `option` names where `root` came from, in messages."""
    _check_duplicates(duplicates)
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        inspected = list(pool.map(inspect_image, [c.path for c in candidates]))
    first_of_hash: dict[str, str] = {}
    content_of_hash: dict[str, int] = {}
    good: list[_Candidate] = []
    transparent: list[bool] = []
    content_ids: list[int] = []
    digests: list[str] = []
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
        digests.append(digest)
    if not good:
        raise UserError(f"{option}: no readable images ({_EXTENSIONS_TEXT}) in {root!r} ({len(skipped)} file(s)/"
                        f"folder(s) skipped)")
    names = tuple(sorted({c.label for c in good}))
    lookup = {n: i for i, n in enumerate(names)}
    has_groups = any(c.group is not None for c in good)
    return Catalogue(
        name=os.path.basename(os.path.normpath(root)),
        labels=np.array([lookup[c.label] for c in good], dtype=np.int64),
        class_names=names,
        paths=tuple(c.path for c in good),
        groups=tuple(c.group or "" for c in good) if has_groups else None,
        transparent=tuple(transparent),
        skipped=tuple(skipped),
        content_ids=np.array(content_ids, dtype=np.int64) if duplicates == "keep" else None,
        root=root,
        digests=tuple(digests),
        levels={name: tuple(c.levels[j] for c in good) for j, name in enumerate(level_names)} or None,
    )


def _flag(option: str) -> str:
    """How the user sets `option`: a config key ('data.root') through --config.<key>, a flag as it is."""
    return option if option.startswith("--") else f"--config.{option}"


def _check_root(root: str | None, layout: str, option: str = "data.root") -> None:
    """`root` must be an existing folder; `option` is what the user set it with (a config key or a flag)."""
    if not root:
        raise UserError(f"{option} is not set: pass {_flag(option)}=/path/to/{layout}")
    if os.path.exists(root) and not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.isfile(root) else "is not a folder"
        raise UserError(f"{option}: {root!r} {what}; point {_flag(option)} at {layout}")
    if not os.path.isdir(root):
        raise UserError(f"{option}: folder {root!r} does not exist; point {_flag(option)} at {layout}")


def walk_following_links(root: str, skipped: list[Skipped]) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(root)` top-down, subfolders and files sorted, that also enters symlinked folders (a tree
    assembled from links is meant to be read through them). A folder whose real path is already on the way
    down from root (a link to an ancestor) would recurse forever: it is not entered but added to `skipped`
    as a symlink loop, as is a folder that cannot be listed. The caller may prune `subfolders` further."""
    above: dict[str, frozenset[str]] = {root: frozenset([os.path.realpath(root)])}

    def unreadable(e: OSError) -> None:
        skipped.append(Skipped(e.filename or root, f"unreadable folder: {e.strerror or e}"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable, followlinks=True):
        on_the_way = above.pop(folder)
        entered = []
        for d in sorted(subfolders):
            path = os.path.join(folder, d)
            real = os.path.realpath(path)
            if real in on_the_way:
                skipped.append(Skipped(path, f"symlink loop: leads back to {real}, a folder above it"))
            else:
                above[path] = on_the_way | {real}
                entered.append(d)
        subfolders[:] = entered  # os.walk descends into these only
        yield folder, subfolders, sorted(files)


def folder_catalogue(root: str, group_level: int = -1, duplicates: str = "skip",
                     option: str = "data.root") -> Catalogue:
    """A tree `root/.../<class>/<image>` of any depth: every folder holding images is a class, named by
    its path relative to root; `group_level` >= 0 names the group by that path component (e.g. 0 for
    `<brand>/<article>`, 1 for Omniglot's `<set>/<alphabet>/<character>`). `duplicates`: see
    `_validated_catalogue`. Symlinked folders and files are followed (see `walk_following_links`).
    `option` is how the user named root (a config key, or a flag such as '--references'), for messages."""
    _check_root(root, "root/<class>/<image> (any depth)", option)
    skipped: list[Skipped] = []
    candidates: list[_Candidate] = []
    for folder, subfolders, all_files in walk_following_links(root, skipped):
        rel = os.path.relpath(folder, root)
        files = []
        for f in all_files:
            path = os.path.join(folder, f)
            if os.path.islink(path) and not os.path.exists(path):
                skipped.append(Skipped(path, f"broken symlink: its target {os.readlink(path)!r} does not exist"))
            else:
                files.append(f)
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        others = [f for f in files if not f.lower().endswith(IMAGE_EXTENSIONS)]
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
    return _validated_catalogue(root, candidates, skipped, duplicates=duplicates, option=option)


class _Lines:
    """A file's lines, handed to csv.reader one at a time; `pos` (lines handed out) can be moved back."""

    def __init__(self, lines: list[str]):
        self.lines, self.pos = lines, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos == len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def read_styles_csv(path: str) -> tuple[list[str], list[list[str]], list[tuple[int, str]]]:
    """(header, rows, (line number, why) of each malformed row), parsed per RFC 4180 by Python's csv module:
    a quoted field may hold commas, "" (a quote) and line breaks; a UTF-8 byte-order mark is dropped.

    The original Kaggle file's last column, productDisplayName, holds unquoted commas: a row without quoted
    fields and with too many fields has the extra ones joined back into the last column, when the header's last
    column is one of FREE_TEXT_LAST_COLUMNS (what splitting each line at most len(header)-1 times did).
    Any other row whose field count is not the header's is malformed. A quote that opens a field and is not
    closed on its line swallows the lines after it: that row is malformed by itself, and reading resumes
    on the next line, so that one stray quote costs one row and not the rest of the file. Blank lines are
    not rows."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # newline="": csv reads \r\n
        lines = _Lines(f.readlines())
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as e:
        raise UserError(f"{path}: unreadable header row: {e}") from None
    if not any(header):
        raise UserError(f"{path}: no header row (the first line should name the columns: id,...)")
    n, join_extra = len(header), header[-1] in FREE_TEXT_LAST_COLUMNS
    rows: list[list[str]] = []
    malformed: list[tuple[int, str]] = []
    while lines.pos < len(lines.lines):
        start = lines.pos
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:  # e.g. a field over csv's size limit: an unclosed quote that ran on and on
            fields = None
        text = "".join(lines.lines[start:lines.pos])
        if fields is not None and len(fields) == n:
            rows.append(fields)
        elif not text.strip():
            continue
        elif fields is None or lines.pos - start > 1:
            malformed.append((start + 1, "malformed row: unterminated quoted field (a quote opens a field "
                                         "that no quote closes on this line)"))
            lines.pos = start + 1
            reader = csv.reader(lines)  # a fresh parser: the old one holds the swallowed lines' state
        elif len(fields) > n and join_extra and fields == text.rstrip("\r\n").split(","):
            # No field was quoted (a quote inside a field is a character): commas are all separators, and
            # the extra ones can only be the display name's.
            rows.append(fields[:n - 1] + [",".join(fields[n - 1:])])
        else:
            why = f"malformed row: {len(fields)} fields, header has {n}"
            if len(fields) > n and join_extra:
                why += " (a row with quoted fields must quote a last field that holds commas)"
            malformed.append((start + 1, why))
    return header, rows, malformed


COMPOSITE_SEPARATOR = "+"


def label_columns(spec: str) -> tuple[str, ...]:
    """The styles.csv columns of a label spec: 'articleType' or a composite 'articleType+baseColour'."""
    return tuple(c.strip() for c in spec.split(COMPOSITE_SEPARATOR))


def styles_catalogue(root: str, label_column: str, group_column: str = "", duplicates: str = "skip",
                     label_levels: tuple[str, ...] = ()) -> Catalogue:
    """Kaggle "Fashion Product Images": `root/styles.csv` (id, ..., label columns) and `root/images/<id>.jpg`.
    Rows whose image is missing are skipped and counted (most rows of the public copies have none).
    `label_column`, `group_column` and each of `label_levels` may be composite, several columns joined by '+'
    (e.g. 'articleType+baseColour': one class per type and colour, named 'Shirts+Navy Blue'); a row with an
    empty value in any of its label, group or level columns is skipped and listed.
    `duplicates`: see `_validated_catalogue` (some product ids share one photo)."""
    _check_root(root, "a folder with styles.csv and images/<id>.jpg")
    csv_path = os.path.join(root, "styles.csv")
    if not os.path.isfile(csv_path):
        raise UserError(f"data.root: {csv_path!r} not found (the Kaggle layout is styles.csv + images/<id>.jpg)")
    header, rows, malformed = read_styles_csv(csv_path)
    specs = {"label": label_columns(label_column), "group": label_columns(group_column) if group_column else (),
             **{f"level {spec}": label_columns(spec) for spec in label_levels}}
    for option, columns in (("data.label_column", ("id", *specs["label"])), ("data.group_column", specs["group"]),
                            ("data.label_levels", sum((label_columns(s) for s in label_levels), ()))):
        for column in columns:
            if column not in header:
                raise UserError(f"{option}: column {column!r} is not in {csv_path}; its columns are {header}")
    col = {c: i for i, c in enumerate(header)}
    skipped = [Skipped(f"{csv_path}:{n}", why) for n, why in malformed]
    candidates = []
    for row in rows:
        path = os.path.join(root, "images", f"{row[col['id']].strip()}.jpg")
        values = {key: tuple(row[col[c]].strip() for c in columns) for key, columns in specs.items()}
        empty = [c for key, columns in specs.items() for c, v in zip(columns, values[key]) if not v]
        if not os.path.isfile(path):
            skipped.append(Skipped(path, "missing image for a styles.csv row"))
        elif empty:
            skipped.append(Skipped(path, f"empty {empty[0]}"))
        else:
            joined = {key: COMPOSITE_SEPARATOR.join(v) for key, v in values.items()}
            levels = tuple(joined[f"level {spec}"] for spec in label_levels)
            candidates.append(_Candidate(path, joined["label"], joined["group"] if group_column else None, levels))
    return _validated_catalogue(root, candidates, skipped, duplicates=duplicates, level_names=tuple(label_levels))


def load_catalogue(data: ml_collections.ConfigDict) -> Catalogue:
    """The catalogue named by `data.source`."""
    _check_duplicates(data.duplicates)  # for every source, though only file sources hash their images
    if data.source == "digits":
        return digits_catalogue()
    if data.source == "glyphs":
        from navee_jax.data.glyphs import glyphs_catalogue

        return glyphs_catalogue()
    if data.source == "folder":
        return folder_catalogue(data.root, data.group_level, data.duplicates)
    if data.source == "styles_csv":
        return styles_catalogue(data.root, data.label_column, data.group_column, data.duplicates,
                                tuple(data.label_levels))
    if data.source.startswith("tfds:"):
        from navee_jax.data.tfds_source import tfds_catalogue

        return tfds_catalogue(data.source[len("tfds:"):], data.tfds_split, data.tfds_label_key, data.tfds_group_key,
                              data.tfds_data_dir)
    raise UserError(f"data.source: unknown source {data.source!r}; use 'glyphs', 'digits', 'folder', 'styles_csv' "
                    f"or 'tfds:<name>'")
