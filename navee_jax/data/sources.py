"""Catalogue sources: scikit-learn's bundled digits (the offline default) and folder trees."""

from __future__ import annotations

import concurrent.futures
import os

import ml_collections
import numpy as np
from PIL import Image

from navee_jax.data.catalogue import Catalogue, Skipped
from navee_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Formats tf.io.decode_image can decode; anything else is skipped up front with its reason.
_TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP"}


def digits_catalogue() -> Catalogue:
    """sklearn's 1,797 real 8x8 handwritten digits (values 0..16), as uint8 (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    names = tuple(str(int(n)) for n in digits.target_names)
    return Catalogue(name="digits", labels=digits.target.astype(np.int64), class_names=names, pixels=pixels)


def _check_image(path: str) -> str | None:
    """Returns why `path` is unusable, or None. Decodes fully: truncated files fail here, not in TF."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
        return f"unreadable image: {type(e).__name__}: {e}"
    if fmt not in _TF_DECODABLE:
        return f"unsupported format: {fmt}"
    return None


def folder_catalogue(root: str, num_workers: int = 8) -> Catalogue:
    """`root/<class>/*.jpg|jpeg|png`; class = sub-folder name. Bad files are skipped and listed."""
    if not root:
        raise UserError("data.root is not set: pass --config.data.root=/path/to/images (folders per class)")
    if not os.path.isdir(root):
        raise UserError(f"data.root: folder {root!r} does not exist; point --config.data.root at root/<class>/*.jpg")
    skipped: list[Skipped] = []
    candidates: list[tuple[str, str]] = []
    for cls in sorted(os.listdir(root)):
        folder = os.path.join(root, cls)
        if not os.path.isdir(folder):
            skipped.append(Skipped(folder, "not in a class folder (expected root/<class>/<image>)"))
            continue
        entries = sorted(os.listdir(folder))
        files = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            skipped.append(Skipped(folder, f"empty class folder: no {'/'.join(IMAGE_EXTENSIONS)} images"))
        skipped += [Skipped(os.path.join(folder, f), f"unsupported file: not {'/'.join(IMAGE_EXTENSIONS)}")
                    for f in entries if f not in files]
        candidates += [(os.path.join(folder, f), cls) for f in files]
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        problems = list(pool.map(_check_image, [p for p, _ in candidates]))
    good = [(p, c) for (p, c), why in zip(candidates, problems) if why is None]
    skipped += [Skipped(p, why) for (p, _), why in zip(candidates, problems) if why is not None]
    if not good:
        raise UserError(f"data.root: no readable {'/'.join(IMAGE_EXTENSIONS)} images under {root!r} "
                        f"(expected root/<class>/*)")
    names = tuple(sorted({c for _, c in good}))
    lookup = {n: i for i, n in enumerate(names)}
    return Catalogue(
        name=os.path.basename(os.path.normpath(root)),
        labels=np.array([lookup[c] for _, c in good], dtype=np.int64),
        class_names=names,
        paths=tuple(p for p, _ in good),
        skipped=tuple(skipped),
    )


def load_catalogue(data: ml_collections.ConfigDict) -> Catalogue:
    """The catalogue named by `data.source`."""
    if data.source == "digits":
        return digits_catalogue()
    if data.source == "folder":
        return folder_catalogue(data.root)
    raise UserError(f"data.source: unknown source {data.source!r}; use 'digits' or 'folder'")
