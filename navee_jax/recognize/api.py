"""Recognizer: a trained embedding (a workdir's checkpoint) + a gallery of enrolled articles.

    rec = Recognizer.load("runs/triplet-omniglot")          # best checkpoint; or ".../checkpoints/<step>"
    rec.enroll(paths, labels)                               # or rec.enroll_folder("refs/<article>/<image>")
    rec.calibrate(heldout_paths, heldout_labels, target_far=0.01)
    rec.predict(query_paths, k=5)                           # [Prediction(article, distance, unknown, top_k)]
    rec.save_gallery("gallery/"); rec.load_gallery("gallery/")

Images are paths, PIL images or uint8 arrays (H, W), (H, W, 1|3) or a batch (N, H, W, C). Files go through
exactly the evaluation preprocessing (`data.pipeline.eval_batches`: tf.io decode, resize, grayscale /
binarize, uint8; normalisation inside the jitted embedding); in-memory images enter it after decoding,
transparent PIL images composited on white as files are.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from navee_jax.data.catalogue import Catalogue, Skipped
from navee_jax.data.pipeline import eval_batches
from navee_jax.data.sources import folder_catalogue, inspect_image
from navee_jax.errors import UserError
from navee_jax.embed import ShiftViews, embed_in_batches, image_normalizer, make_embed_fn
from navee_jax.models import build_model
from navee_jax.recognize.gallery import Gallery
from navee_jax.checkpoints import load_weights_into, restore_arrays, split_workdir, unwrap_arrays
from navee_jax.sharding import check_divisible, make_mesh
from navee_jax.method import method_of
from navee_jax.recorded_config import read_config
from navee_jax.train_state import TrainState

# The data config keys that decide what the network sees: a gallery made with other values is refused.
PREPROCESSING_KEYS = ("image_size", "resize", "fill", "grayscale", "binarize", "mean", "std")
# Added later: in the fingerprint only when not the value galleries made before them had (so that those still match).
LATER_PREPROCESSING_KEYS = {"crop_fraction": 1.0, "interpolation": "bilinear"}
# Model keys that matter after training (weights are compared by checksum; these name what differs).
MODEL_KEYS = ("backbone", "width", "in_channels", "remove_top_layers", "compute_dtype", "embed_dim", "normalize",
              "head_batchnorm")

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One query image: its best article (None when unknown or on error), distances, and the top k.
    `unknown` is None on error: an image that could not be read was neither recognised nor rejected."""

    image: str
    article: str | None
    distance: float | None
    unknown: bool | None
    top_k: list[tuple[str, float]]
    error: str | None = None


def _tree_sha256(tree: Any) -> str:
    """SHA-256 of a tree of arrays: its paths and bytes, in path order."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                             key=lambda pl: jax.tree_util.keystr(pl[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _as_rgb(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 (H, W, 3); transparency composited on white, as the file sources do."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _as_pixels(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ValueError(f"array of {array.dtype} {array.shape}: expected uint8 (H, W), (H, W, 1) or (H, W, 3)")
    return array[..., None] if array.ndim == 2 else array


def image_list(images: Any) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        raise UserError("images: pass a sequence of images (paths, PIL images, arrays) or an (N, H, W, C) array")
    return list(images)


def describe(image: ImageInput, i: int) -> str:
    """How an input image is named in outputs: its path, or its position."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image[{i}]"


def map_images(images: Any, run: Callable[[Catalogue], np.ndarray], dim: int) -> tuple[np.ndarray, dict[int, str]]:
    """(`run` of every image (n, dim), {position: why} for images that could not be read; their rows are NaN).
    Images are paths, PIL images or arrays; `run` gets them as catalogues, each row through the evaluation input
    pipeline, and returns one row per catalogue image."""
    items = image_list(images)
    errors: dict[int, str] = {}
    files: list[tuple[int, str, bool]] = []
    pixels: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    on_disk = [i for i, x in enumerate(items) if isinstance(x, (str, os.PathLike))]
    # Every file is fully decoded once up front (as the catalogue does), so tf.data never meets a bad one.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        inspected = pool.map(inspect_image, [os.fspath(items[i]) for i in on_disk])
    for i, (why, _, transparent) in zip(on_disk, inspected):
        if why:
            errors[i] = why
        else:
            files.append((i, os.fspath(items[i]), transparent))
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            continue
        try:
            array = _as_rgb(item) if isinstance(item, Image.Image) else _as_pixels(np.asarray(item))
            pixels.setdefault(array.shape, []).append((i, array))
        except (ValueError, OSError) as e:
            errors[i] = str(e)
    out = np.full((len(items), dim), np.nan, np.float32)
    groups: list[tuple[list[int], Catalogue]] = []
    if files:
        groups.append(([i for i, _, _ in files], Catalogue(
            "images", np.zeros(len(files), np.int64), ("",), paths=tuple(p for _, p, _ in files),
            transparent=tuple(t for _, _, t in files))))
    for same_shape in pixels.values():  # one table per image shape: tf.data gathers from a dense array
        groups.append(([i for i, _ in same_shape], Catalogue(
            "arrays", np.zeros(len(same_shape), np.int64), ("",), pixels=np.stack([a for _, a in same_shape]))))
    for positions, catalogue in groups:
        out[positions] = run(catalogue)
    return out, errors


class Recognizer:
    """A trained embedding with a gallery; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, model: nnx.Module, source: str,
                 batch_size: int | None = None, loss_params: dict[str, Any] | None = None):
        """`source`: the checkpoint folder the weights came from (recorded in galleries, for `predict`);
        `loss_params`: the trained loss's parameters, which rank images for a method with its own similarity
        (e.g. the siamese network's verification head)."""
        self.config = config
        self.mesh = make_mesh()
        self.batch_size = batch_size or config.eval.batch_size
        check_divisible(self.batch_size, self.mesh, "the embedding batch size")
        model.eval()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params, self.rest = params, rest
        self.prepare = image_normalizer(config.data, config.model.in_channels)
        # make_embed_fn reads only params and model_state; the optimizer's state stays empty.
        self._state = TrainState(np.zeros((), np.int32), params, rest, {}, ())
        self.shifts = shifts = ShiftViews.from_config(config)
        self._embed_fn = make_embed_fn(self.graphdef, self.mesh, self.prepare, shifts=shifts)
        self.fingerprint = {
            # The shift averaging only when on, so that galleries from before the key still match.
            "model": {k: config.model[k] for k in MODEL_KEYS} | ({"tta_shift_px": shifts.px} if shifts else {}),
            "preprocessing": {k: (list(config.data[k]) if k in ("mean", "std") else config.data[k])
                              for k in PREPROCESSING_KEYS}
                             | {k: config.data[k] for k, old in LATER_PREPROCESSING_KEYS.items()
                                if config.data[k] != old},
            "weights_sha256": _tree_sha256(nnx.to_pure_dict(nnx.state(model))),
            "checkpoint": source,
        }
        # The method's own ranking (None: Euclidean); a gallery made with other parameters for it is refused.
        self.distance = method_of(config).recognition_distance(config, loss_params or {})
        if self.distance is not None:
            self.fingerprint["distance"] = {"loss": config.loss.name, "params_sha256": _tree_sha256(loss_params)}
        self.dim = int(model.out_features)
        self.gallery = Gallery(self.dim, self.fingerprint, self.distance)

    @classmethod
    def load(cls, path: str, checkpoint: str | None = None, batch_size: int | None = None) -> Recognizer:
        """From a training workdir (its `checkpoint`: best, latest or a step; default best) or a
        `<workdir>/checkpoints/<step>` folder."""
        workdir, default = split_workdir(path)
        checkpoint = checkpoint or default
        config = read_config(workdir, path)
        problem = method_of(config).recognition_problem(config)
        if problem:
            raise UserError(f"workdir {workdir!r} cannot serve recognition: {problem}")
        step, restored = restore_arrays(workdir, checkpoint)
        model_cfg = ml_collections.ConfigDict(config.model.to_dict())
        model_cfg.pretrained = ""  # the checkpoint holds every weight; the original file may be elsewhere
        model = build_model(model_cfg, nnx.Rngs(config.seed), config.data.image_size)
        load_weights_into(model, restored, f"{workdir}/checkpoints/{step}")
        return cls(config, model, os.path.join(workdir, "checkpoints", str(step)), batch_size,
                   unwrap_arrays(restored.get("loss_params", {})))

    # -- embeddings -------------------------------------------------------------------------------------

    def _embed_catalogue(self, catalogue: Catalogue, indices: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of a catalogue's images (those at `indices`, default all), through the evaluation
        input pipeline."""
        indices = np.arange(len(catalogue)) if indices is None else indices
        if len(indices) == 0:
            return np.zeros((0, self.dim), np.float32)
        batches = eval_batches(catalogue, indices, self.config.data, self.batch_size)
        return embed_in_batches(self._embed_fn, self._state, batches, self.batch_size, self.mesh)

    def embed_or_errors(self, images: Any) -> tuple[np.ndarray, dict[int, str]]:
        """(embeddings (n, D), {position: why} for images that could not be read; their rows are NaN)."""
        return map_images(images, self._embed_catalogue, self.dim)

    def embed(self, images: Any) -> np.ndarray:
        """(n, D) embeddings; an unreadable image is an error naming it (`embed_or_errors` keeps going)."""
        items = image_list(images)
        out, errors = self.embed_or_errors(items)
        if errors:
            i = min(errors)
            raise UserError(f"{describe(items[i], i)}: {errors[i]}" +
                            (f" (and {len(errors) - 1} more unreadable)" if len(errors) > 1 else ""))
        return out

    # -- gallery --------------------------------------------------------------------------------------

    def enroll(self, images: Any, labels: Sequence[str]) -> None:
        """Adds reference images of (new or enrolled) articles to the gallery, all of them (`enroll_folder`
        skips images already enrolled)."""
        items = image_list(images)
        if len(items) != len(labels):
            raise UserError(f"enroll: {len(labels)} labels for {len(items)} images")
        self.gallery.add(self.embed(items), labels, [describe(x, i) for i, x in enumerate(items)])

    def enroll_folder(self, root: str, option: str = "--references") -> list[str]:
        """Enrolls `root/.../<article>/<image>` (the article is the folder's path under root, as the folder
        data source names classes); returns lines describing skipped files (unreadable, duplicates, ...).

        Images already in the gallery are skipped and listed (`Gallery.enrolled_copies`): those with the
        bytes (SHA-1) of an enrolled reference of the same article, whatever their path, are "already
        enrolled"; with the bytes of another article's reference, a "duplicate" (as within one folder).
        Enrolling the same folder twice therefore adds nothing. `option` names root in error messages."""
        catalogue = folder_catalogue(root, option=option)
        labels = [catalogue.class_names[c] for c in catalogue.labels]
        why = self.gallery.enrolled_copies(labels, catalogue.digests, catalogue.paths)
        new = np.array([i for i, w in enumerate(why) if w is None], np.int64)
        self.gallery.add(self._embed_catalogue(catalogue, new), [labels[i] for i in new],
                         [catalogue.paths[i] for i in new], [catalogue.digests[i] for i in new])
        enrolled = tuple(Skipped(p, w) for p, w in zip(catalogue.paths, why) if w is not None)
        return dataclasses.replace(catalogue, skipped=catalogue.skipped + enrolled).skip_report()

    def calibrate_folder(self, root: str, target_far: float, option: str = "--calibration") -> dict[str, Any]:
        """`calibrate` on a folder tree of held-out photos laid out like the references (`option` names
        root in error messages)."""
        catalogue = folder_catalogue(root, option=option)
        return self.gallery.calibrate(self._embed_catalogue(catalogue),
                                      [catalogue.class_names[c] for c in catalogue.labels], target_far)

    def remove(self, articles: Sequence[str]) -> None:
        self.gallery.remove(articles)

    def calibrate(self, images: Any, labels: Sequence[str], target_far: float) -> dict[str, Any]:
        """Sets the unknown threshold for `target_far` from held-out labelled images (see Gallery.calibrate)."""
        return self.gallery.calibrate(self.embed(images), labels, target_far)

    def save_gallery(self, path: str) -> None:
        self.gallery.save(path)

    def load_gallery(self, path: str) -> Gallery:
        """Loads a gallery, refusing one made by another model or preprocessing."""
        gallery = Gallery.load(path)
        gallery.check_compatible(self.fingerprint, repr(path))
        gallery.distance = self.distance
        self.gallery = gallery
        return gallery

    # -- prediction -----------------------------------------------------------------------------------

    def predict_embeddings(self, embeddings: np.ndarray, k: int = 5, mode: str = "nn",
                           names: Sequence[str] | None = None, index: str = "exact") -> list[Prediction]:
        """Predictions for query embeddings: "unknown" when the best distance exceeds the calibrated
        threshold (never, when the gallery is not calibrated). `mode`: "nn" (nearest reference image) or
        "prototype" (nearest article mean); `index`: "exact" or "faiss" (approximate, optional)."""
        names = names or [f"image[{i}]" for i in range(len(embeddings))]
        arts, dist = self.gallery.search(embeddings, k, mode, index)
        threshold = self.gallery.threshold(mode)
        out = []
        for name, a, d in zip(names, arts, dist):
            unknown = threshold is not None and float(d[0]) > threshold
            top = [(self.gallery.articles[j], float(x)) for j, x in zip(a, d)]
            out.append(Prediction(name, None if unknown else top[0][0], float(d[0]), unknown, top))
        return out

    def predict(self, images: Any, k: int = 5, mode: str = "nn", index: str = "exact") -> list[Prediction]:
        """One Prediction per image, in order; an unreadable image gets one with `error` set."""
        items = image_list(images)
        emb, errors = self.embed_or_errors(items)
        names = [describe(x, i) for i, x in enumerate(items)]
        ok = [i for i in range(len(items)) if i not in errors]
        found = dict(zip(ok, self.predict_embeddings(emb[ok], k, mode, [names[i] for i in ok], index))) if ok else {}
        return [found[i] if i in found else Prediction(names[i], None, None, None, [], errors[i])
                for i in range(len(items))]
