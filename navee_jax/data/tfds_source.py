"""A catalogue from a TensorFlow Datasets (TFDS) image dataset that is already prepared on disk.

Nothing is ever downloaded here: runs must work offline, so a dataset that is not prepared ends with
a one-line UserError saying how to prepare it, instead of a download attempt or a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from navee_jax.data.catalogue import Catalogue, Skipped
from navee_jax.data.tf_import import tf_module
from navee_jax.errors import UserError

IMAGE_KEY = "image"


def _first_line(e: BaseException) -> str:
    # TFDS messages can run to hundreds of lines (e.g. every known dataset name); UserError is one line.
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _namer(feature: Any, key: str, what: str) -> Callable[[Any], str | None]:
    """A function from one raw feature value to its name, or None when the value is no class (-1)."""
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.ClassLabel):
        num_classes = feature.num_classes

        def class_label_name(value: Any) -> str | None:
            # ClassLabel allows -1 for "no label"; int2str would raise on it.
            return feature.int2str(int(value)) if 0 <= int(value) < num_classes else None

        return class_label_name

    def plain_name(value: Any) -> str:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise UserError(f"{what} {key!r}: holds arrays of shape {value.shape}, not one value per image")
        return str(value.item() if isinstance(value, np.generic | np.ndarray) else value)

    return plain_name


def _sort_key(value: Any) -> Any:
    # Classes keep the dataset's own order: ClassLabel index (numeric), or the text itself.
    return value.item() if isinstance(value, np.generic | np.ndarray) else value


def _to_uint8(pixels: np.ndarray, where: str) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    # Rescaling other ranges (uint16, float depth maps) would be a guess; only lossless casts are done.
    if (np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == np.bool_) and pixels.size and \
            0 <= pixels.min() and pixels.max() <= 255:
        return pixels.astype(np.uint8)
    raise UserError(f"{where}: images are {pixels.dtype} with values outside 0..255; only 8-bit images are supported")


def tfds_catalogue(name: str, split: str, label_key: str, group_key: str = "",
                   data_dir: str | None = None) -> Catalogue:
    """Every element of TFDS dataset `name`, `split` (e.g. "train", "test[:10%]"), read in its stored
    order: pixels from the `image` feature, class from `label_key`, group (e.g. omniglot's "alphabet")
    from `group_key` ('' = none). ClassLabel values are named by the feature's names. Elements whose
    label or group is -1 (TFDS's "no label") are listed in `skipped`, never silently dropped."""
    tf_module()  # TensorFlow as the rest of the input uses it: quiet (navee_jax/__init__) and off the GPUs
    import tensorflow_datasets as tfds

    where = f"TFDS dataset {name!r}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UserError(f"{where} is unknown to tensorflow-datasets {tfds.__version__}: {_first_line(e)} "
                        f"(names as in `tfds.list_builders()`, e.g. 'omniglot', 'fashion_mnist')") from None
    features = builder.info.features
    for what, key in (("image feature", IMAGE_KEY), ("label key", label_key), ("group key", group_key)):
        if (key or what == "label key") and key not in features:
            raise UserError(f"{where}: {what} {key!r} is not among its features {sorted(features.keys())}")
    try:
        # builder.as_dataset is what tfds.load(..., download=False) calls; going through the builder
        # keeps "unknown dataset" and "not prepared" apart. shuffle_files=False: a stable element order.
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError:
        # TFDS signals "no prepared data under data_dir" with an AssertionError from as_dataset.
        root = getattr(builder, "data_dir_root", data_dir) or "the default TFDS data_dir"
        raise UserError(f"{where} is not prepared in {root} (nothing is downloaded at run time): run "
                        f"`tfds build {name} --data_dir=DIR` once on a machine with network, copy DIR here and "
                        f"pass --config.data.tfds_data_dir=DIR") from None
    except ValueError as e:
        raise UserError(f"{where}: split {split!r}: {_first_line(e)}") from None

    keys = [k for k in (IMAGE_KEY, label_key, group_key) if k]
    # Decode only the features used; omniglot's other ints or a dataset's extra images cost time for nothing.
    ds = ds.map(lambda ex: {k: ex[k] for k in keys})
    label_name = _namer(features[label_key], label_key, "label key")
    group_name = _namer(features[group_key], group_key, "group key") if group_key else None
    catalogue_name = f"{name}/{split}"

    images: list[np.ndarray] = []
    raw_labels: list[Any] = []
    names_of: dict[Any, str] = {}
    groups: list[str] = []
    skipped: list[Skipped] = []
    first_shape: tuple[tuple[int, ...], int] | None = None
    for i, ex in enumerate(tfds.as_numpy(ds)):
        ref = f"{catalogue_name} element {i}"
        label = label_name(ex[label_key])
        group = group_name(ex[group_key]) if group_name else ""
        if label is None or group is None:
            skipped.append(Skipped(ref, f"unlabelled: {label_key if label is None else group_key} is -1"))
            continue
        image = ex[IMAGE_KEY]
        if image.ndim not in (2, 3):
            raise UserError(f"{where}: feature {IMAGE_KEY!r} has shape {image.shape} (element {i}), not an image")
        if first_shape is None:
            first_shape = (image.shape, i)
        elif image.shape != first_shape[0]:
            raise UserError(f"{where} split {split!r}: images differ in shape, {first_shape[0]} (element "
                            f"{first_shape[1]}) and {image.shape} (element {i}); all must have the same shape")
        raw = _sort_key(ex[label_key])
        names_of[raw] = label
        images.append(image)
        raw_labels.append(raw)
        groups.append(group)
    if not images:
        raise UserError(f"{where} split {split!r}: no labelled images ({len(skipped)} unlabelled)")

    # Only classes that occur: an empty class (e.g. omniglot's evaluation alphabets in "train") could
    # otherwise be drawn as a held-out class with nothing to evaluate.
    ordered = sorted(names_of)
    index = {raw: j for j, raw in enumerate(ordered)}
    class_names = tuple(names_of[raw] for raw in ordered)
    if len(set(class_names)) != len(class_names):
        raise UserError(f"{where}: label key {label_key!r} gives the same name to different values")
    pixels = np.stack(images)
    if pixels.ndim == 3:  # a feature without a channel axis
        pixels = pixels[..., None]
    return Catalogue(
        name=catalogue_name,
        labels=np.array([index[raw] for raw in raw_labels], dtype=np.int64),
        class_names=class_names,
        pixels=_to_uint8(pixels, f"{where} split {split!r}"),
        groups=tuple(groups) if group_key else None,
        skipped=tuple(skipped),
    )
