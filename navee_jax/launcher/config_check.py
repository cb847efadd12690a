"""One validation pass over a run's whole config before any work: types, ranges, enums, cross-key rules.

launch.py calls `check_config` right after the flags parse, before any data loads or any workdir file is
written. It raises a one-line UserError for the first problem, in a fixed order: a key the loss needs but the
config lacks (LOSS_KEYS), then each key's own rule (RULES, in table order), then the rules between keys
(CROSS, in order; a method's own are its `Method.check_config`'s, called from there). Messages read
`config key 'data.image_size' = 0: must be an integer >= 1`.

The enumerations come from the modules that act on them (miners, metrics, backbones, samplers, classifiers,
baselines), so adding one there is enough. The checks deeper in the code (sources, splits, models, losses) stay
as defence in depth; this pass makes sure they are never the first to fire.
Flag parsing (ml_collections) already rejects a scalar of the wrong type (navee_jax.cli.explain_flag_error);
the type rules here cover what it lets through: tuples take any literal (`--config.eval.shots=abc` is
('abc',)), and configs built in Python are not flag-checked at all.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator

import ml_collections

from navee_jax.data.augment import INTERPOLATIONS, RESIZE_MODES
from navee_jax.data.rotations import ANGLES
from navee_jax.data.sources import DUPLICATES
from navee_jax.errors import UserError
from navee_jax.evaluate.baselines import BASELINES
from navee_jax.evaluate.fewshot import CLASSIFIERS
from navee_jax.distances import METRICS
from navee_jax.losses import loss_entry
from navee_jax.losses.triplet import MINERS
from navee_jax.models import BACKBONES, COMPUTE_DTYPES
from navee_jax.models.vit import SIZES, VIT_BACKBONES, VIT_SIZES
from navee_jax.models.conv4 import NUM_BLOCKS
from navee_jax.models.koch import _CONVS as KOCH_CONVS
from navee_jax.models.vgg import _VGG16, CLASSIFIER_LAYERS
from navee_jax.method import available_methods, method_of

# Enumerations that exist only as literals where they are used:
SOURCES = ("glyphs", "digits", "folder", "styles_csv")  # navee_jax.data.sources.load_catalogue, plus 'tfds:<name>'
SPLIT_MODES = ("classes", "groups", "partial", "stratified")  # navee_jax.data.splits.heldout_classes
SAMPLER_KINDS = ("pk", "pairs", "triplets", "episodes", "tasks", "shuffled")  # what navee_jax.data.pipeline batches

# The loss keys each objective reads (navee_jax.losses.*, navee_jax.meta.train); a config without one
# would fail with an AttributeError once the data has loaded. params_lr_multiplier is read with a default.
LOSS_KEYS = {
    "triplet": ("margin", "miner", "metric", "top_fraction"),
    "contrastive": ("margin", "p_mining"),
    "protonet": ("metric",),
    "multi_similarity": ("alpha", "beta", "base", "epsilon"),
    "proxy_anchor": ("alpha", "delta"),
    "verification": (),
    "maml": ("inner_steps", "inner_lr", "eval_inner_steps", "first_order", "learn_inner_lr"),
    "softmax_cross_entropy": ("label_smoothing",),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    allowed: str  # what the message says a value must be, e.g. "an integer >= 1"
    ok: Callable[[Any], bool]
    example: str = ""  # a command-line form that works: tuples are where flags let anything through


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # bool is an int subclass: True is no image size


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)  # nan passes no range


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    allowed = "an integer" if lo is None else f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(allowed, lambda v: _is_int(v) and (lo is None or lo <= v) and (hi is None or v <= hi))


def number(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Rule:
    if math.isinf(lo):
        allowed = "a finite number"
    elif math.isinf(hi):
        allowed = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Rule(allowed, lambda v: (_is_number(v) and (lo < v if lo_open else lo <= v)
                                    and (v < hi if hi_open else v <= hi)))


def one_of(choices: Any) -> Rule:
    choices = tuple(choices)
    return Rule(f"one of {list(choices)}", lambda v: isinstance(v, str) and v in choices)


def text(optional: bool = False) -> Rule:
    return Rule("a string or None" if optional else "a string",
                lambda v: isinstance(v, str) or (optional and v is None))


def tuple_of(item: Rule, length: int | None = None, nonempty: bool = False, example: str = "") -> Rule:
    size = f" of {length}" if length else ""
    return Rule(f"a {'non-empty ' if nonempty else ''}tuple{size}, each entry {item.allowed}",
                lambda v: (isinstance(v, (tuple, list)) and (length is None or len(v) == length)
                           and (bool(v) or not nonempty) and all(item.ok(x) for x in v)), example)


BOOL = Rule("True or False", lambda v: isinstance(v, bool))
SOURCE = Rule(f"one of {list(SOURCES)} or 'tfds:<name>'",
              lambda v: isinstance(v, str) and (v in SOURCES or (v.startswith("tfds:") and len(v) > len("tfds:"))))
FRACTION = number(0, 1, lo_open=True)  # top-k selections keep ceil(f * n) entries: f = 0 would keep nothing

# Every key of every config in configs/ (tests/test_config_check.py fails on a key without a rule).
RULES: dict[str, Rule] = {
    "seed": integer(0, 2**63 - 1),  # numpy's default_rng([seed, ...]) rejects negatives; jax's key takes a C long
    "data.source": SOURCE,
    "data.root": text(optional=True),  # a placeholder: None until set; required by file sources (CROSS)
    "data.group_level": integer(-1),  # -1 = no groups
    "data.label_column": text(),
    "data.group_column": text(),
    "data.label_levels": tuple_of(text(), example="('subCategory', 'masterCategory')"),
    "data.duplicates": one_of(DUPLICATES),
    "data.tfds_split": text(),
    "data.tfds_label_key": text(),
    "data.tfds_group_key": text(),
    "data.tfds_data_dir": text(optional=True),
    "data.image_size": integer(1),  # each backbone's own minimum: CROSS
    "data.resize": one_of(RESIZE_MODES),
    "data.crop_fraction": number(0, 1, lo_open=True),  # of the resized shorter side, kept by data.resize='crop'
    "data.interpolation": one_of(INTERPOLATIONS),
    "data.fill": number(0, 1),  # a pixel value of images in [0, 1]
    "data.grayscale": BOOL,
    "data.binarize": BOOL,
    "data.rotated_classes": tuple_of(Rule(f"one of {list(ANGLES)}", lambda v: _is_int(v) and v in ANGLES),
                                     example="(90, 180, 270)"),
    "data.flip": BOOL,
    "data.rotation_deg": number(0),  # rotations are drawn from [-deg, +deg]
    "data.translate_px": number(0),  # shifts are drawn from [-px, +px] on each axis
    "data.crop_scale_min": number(0, 1, lo_open=True),  # an area fraction; 1 = no crop
    "data.affine": BOOL,  # Koch et al.'s random affine distortions (data.augment.random_geometry)
    "data.color_jitter": number(0, 1),  # contrast / saturation factors in [1 - s, 1 + s]: TF needs 1 - s >= 0
    "data.mean": tuple_of(number(), length=3, example="(0.5, 0.5, 0.5)"),  # per RGB channel
    "data.std": tuple_of(number(0, lo_open=True), length=3, example="(0.25, 0.25, 0.25)"),  # divides the pixels
    "split.mode": one_of(SPLIT_MODES),
    "split.seed": integer(-1, 2**63 - 1),  # -1 = the run's seed
    # Class names are strings: --config.split.heldout_classes=6 parses as the int 6, which matches no class.
    "split.heldout_classes": tuple_of(text(), example="('6', '7')"),
    "split.num_heldout_classes": integer(0),  # >= 1 where it is used: CROSS
    "split.heldout_groups": tuple_of(text(), example="('Greek',)"),
    "split.num_heldout_groups": integer(0),
    "split.partial_group": text(),
    "split.train_groups": tuple_of(text(), example="('Apparel',)"),
    "split.support_fraction": number(0, 1),  # strictly inside unless split.support_count is set: CROSS
    "split.support_count": integer(0),  # 0 = use support_fraction
    "split.test_fraction": number(0, 1, lo_open=True, hi_open=True),  # each class keeps a test and a train image
    "split.validation_fraction": number(0, 1, hi_open=True),  # 0 = no validation part
    "split.min_images_per_class": integer(2),  # make_split treats smaller values as 2: one support + one query
    "model.backbone": one_of(BACKBONES),
    "model.width": integer(1),
    "model.block_widths": Rule(f"() or {NUM_BLOCKS} integers >= 1, e.g. (64, 64, 128, 128)",
                               lambda v: isinstance(v, tuple) and len(v) in (0, NUM_BLOCKS)
                               and all(_is_int(w) and w >= 1 for w in v)),  # conv4's blocks
    "model.global_pool": BOOL,  # conv4's last pool
    "model.in_channels": Rule("1 or 3", lambda v: _is_int(v) and v in (1, 3)),  # train.step.image_normalizer
    "model.remove_top_layers": integer(0, CLASSIFIER_LAYERS),  # vgg's classifier layers
    "model.pretrained": text(),
    "model.compute_dtype": one_of(COMPUTE_DTYPES),
    "model.embed_dim": integer(0),  # 0: the backbone's features, no projection
    "model.normalize": BOOL,
    "model.tta_shift_px": integer(0),  # pixels of the resized image; below half of it (CROSS)
    "model.whiten": number(0, 1),  # the power of sigma the whitening divides by (CROSS)
    "model.whiten_images": integer(2),  # training images the whitening is fitted on
    "model.pool_grid": integer(1),  # a divisor of the last feature map's side (checked when the model runs)
    "model.num_stages": integer(1, 4),  # resnet* (CROSS)
    "model.frozen_batchnorm": BOOL,
    "model.frozen_stages": tuple_of(text(), example="('conv1', 'bn1', 'layer1')"),  # names checked in CROSS
    "model.head_batchnorm": BOOL,
    "model.head_hidden": integer(0),  # 0: a linear head
    "model.train_last_blocks": integer(-1),  # -1: off; vit_* only, at most its depth (CROSS)
    "model.init_workdir": text(),  # a workdir with checkpoints (CROSS)
    "top.views": integer(1),
    "top.cache_dir": text(),
    "sampler.kind": one_of(SAMPLER_KINDS),  # which of them the method (and loss) trains on: CROSS
    "sampler.classes_per_batch": integer(1),
    "sampler.images_per_class": integer(1),
    "sampler.ways": integer(2),  # a 1-way episode has nothing to tell apart
    "sampler.shots": integer(1),
    "sampler.queries": integer(1),
    "sampler.tasks_per_batch": integer(),  # range: MAML's (CROSS), the one sampler kind that reads it
    "sampler.tuples_per_batch": integer(1),
    "sampler.p_same": number(0, 1),  # a probability
    "sampler.batch_size": integer(1),
    "optim.lr": number(0, lo_open=True),
    "optim.weight_decay": number(0),
    "optim.decay_every_epochs": integer(1),  # 0 would decay at every step (transition_steps is clamped to 1)
    "optim.decay_factor": number(0, 1, lo_open=True),  # 1 = no decay
    "train.num_epochs": integer(1),
    "train.steps_per_epoch": integer(0),  # 0 = one pass over the training images
    "train.log_every": integer(1),  # a modulus
    "train.keep_checkpoints": integer(1),  # resuming needs the latest one
    "eval.batch_size": integer(1),
    "eval.ways": integer(2),
    "eval.shots": tuple_of(integer(1), nonempty=True, example="(1, 5)"),
    "eval.queries_per_class": integer(1),
    "eval.episodes": integer(1),
    "eval.grid_ways": tuple_of(integer(2), nonempty=True, example="(2, 5, 10)"),
    "eval.grid_shots": tuple_of(integer(1), nonempty=True, example="(1, 5)"),
    "eval.standard_episodes": integer(1),
    "eval.classifiers": tuple_of(one_of(CLASSIFIERS), example="('1nn', 'prototype')"),
    "eval.baselines": tuple_of(one_of(BASELINES), example="('raw pixels', 'HOG')"),
    "eval.metric": one_of(METRICS),  # --mode=evaluate's retrieval distance
    "method": text(),  # a registered method: CROSS
    "loss.name": text(),  # the method's to check: metric learning's are the registered losses
    "loss.margin": number(0),
    "loss.miner": one_of(MINERS),  # an unknown miner would only fail inside the jitted step
    "loss.top_fraction": FRACTION,
    "loss.metric": one_of(METRICS),
    "loss.p_mining": FRACTION,
    "loss.alpha": number(0, lo_open=True),  # scales (and divides) the similarities
    "loss.beta": number(0, lo_open=True),
    "loss.base": number(),
    "loss.epsilon": number(0),
    "loss.delta": number(0),
    "loss.params_lr_multiplier": number(0),  # 0 keeps the proxies / Meta-SGD step sizes at their start
    # MAML's ranges are its Method.check_config's (CROSS); here only the types its comparisons need.
    "loss.inner_steps": integer(),
    "loss.inner_lr": number(),
    "loss.eval_inner_steps": integer(),
    "loss.first_order": BOOL,
    "loss.learn_inner_lr": BOOL,
    "loss.label_smoothing": number(0, 1, hi_open=True),  # 1 would train towards the uniform distribution
}


def _koch_min_size() -> int:
    def fits(size: int) -> bool:  # the loop of KochNet.__init__: unpadded convs, 2x2 pools
        for _, kernel, pool in KOCH_CONVS:
            size = (size - kernel + 1) // (2 if pool else 1)
            if size < 1:
                return False
        return True
    return next(s for s in range(1, 1024) if fits(s))


# The smallest data.image_size each backbone builds and runs on (ResNets pad: any size works). Conv-4 and Koch
# check it when built, VGG not at all (its adaptive pooling divides by zero below 2 ** (number of max-pools)).
MIN_IMAGE_SIZE = {"conv4": 2**NUM_BLOCKS, "koch": _koch_min_size(), "vgg16": 2 ** _VGG16.count("M"),
                  "vgg16_bn": 2 ** _VGG16.count("M")}
_SOURCE_GROUPS = {"folder": "data.group_level >= 0", "styles_csv": "data.group_column",
                  "tfds": "data.tfds_group_key"}  # what gives a source's images groups (digits has none)


def _has_groups(d: ml_collections.ConfigDict) -> bool:
    return (d.source == "glyphs"  # its groups are the scripts
            or (d.source == "folder" and d.group_level >= 0) or (d.source == "styles_csv" and bool(d.group_column))
            or (d.source.startswith("tfds:") and bool(d.tfds_group_key)))


def _group_source(c: ml_collections.ConfigDict) -> str | None:
    if c.split.mode in ("classes", "stratified") or _has_groups(c.data):
        return None
    how = _SOURCE_GROUPS.get(c.data.source.partition(":")[0])
    return (f"needs groups; data.source={c.data.source!r} has them only with {how}" if how else
            f"needs groups; data.source={c.data.source!r} has none (use a folder, styles_csv or tfds source)")


def _drawn_classes(c: ml_collections.ConfigDict) -> str | None:
    s = c.split
    if s.num_heldout_classes >= 1:
        return None
    if s.mode == "classes" and not s.heldout_classes:
        return "must be >= 1 with split.mode='classes' and split.heldout_classes=() (that many classes are drawn)"
    if s.mode == "partial":
        return "must be >= 1 with split.mode='partial' (that many classes of split.partial_group are held out)"
    return None


def _pretrained_preprocessing(c: ml_collections.ConfigDict) -> str | None:
    """A pretrained ViT sees images resized, cropped and normalised as its own training's were (the gallery
    fingerprint keeps these data keys, so the choice travels with every embedding)."""
    if c.model.backbone not in VIT_BACKBONES or not os.path.isdir(c.model.pretrained):
        return None
    from navee_jax.models.hf_preprocessing import settings_problem
    from navee_jax.models.hf_vit import pretrained_settings

    found = pretrained_settings(c.model.pretrained)
    return None if found is None else settings_problem(c.model.pretrained, *found, c.data)


def _min_image_size(c: ml_collections.ConfigDict) -> str | None:
    need = MIN_IMAGE_SIZE.get(c.model.backbone, 1)
    if c.data.image_size < need:
        return f"model.backbone={c.model.backbone!r} needs images of >= {need} pixels a side"
    if c.model.backbone in VIT_BACKBONES:
        patch = SIZES[VIT_SIZES[c.model.backbone]]["patch_size"]
        if c.data.image_size % patch:
            return (f"model.backbone={c.model.backbone!r} cuts images into {patch}x{patch} patches: data.image_size="
                    f"{c.data.image_size} is not a multiple of {patch}")
    if "HOG" in c.eval.baselines and c.data.image_size < 2:
        return "the 'HOG' baseline of eval.baselines needs images of >= 2 pixels a side"
    return None


def _method(c: ml_collections.ConfigDict) -> str | None:
    name = c.get("method", "metric_learning")
    return None if name in available_methods() else f"unknown method; available: {available_methods()}"


def _loss_name(c: ml_collections.ConfigDict) -> str | None:
    try:
        method_of(c).sampler_kinds(c)  # metric learning's are its registered losses'
    except UserError as e:
        return str(e).removeprefix("loss.name: ")
    return None


def _sampler_kind(c: ml_collections.ConfigDict) -> str | None:
    kinds = method_of(c).sampler_kinds(c)
    return None if c.sampler.kind in kinds else f"{_trainer(c)} trains on {list(kinds)}"


def _trainer(c: ml_collections.ConfigDict) -> str:
    name = c.get("method", "metric_learning")
    return f"loss.name={c.loss.name!r}" if name == "metric_learning" else f"method={name!r}"


def _method_settings(c: ml_collections.ConfigDict) -> str | None:
    """A method's own rules (MAML's backbone, head, BatchNorm, ...): it raises its one line."""
    method_of(c).check_config(c)
    return None


def _abstract_model(c: ml_collections.ConfigDict) -> Any:
    """The network of the checked keys, abstract (shapes only, nothing allocated, no pretrained file read)."""
    from flax import nnx

    from navee_jax.models import build_model

    model_cfg = ml_collections.ConfigDict(c.model.to_dict())
    model_cfg.pretrained = ""
    return nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0), c.data.image_size))


def _frozen_stages(c: ml_collections.ConfigDict) -> str | None:
    """Each name must be a stage of this backbone: models.stages.freeze_stages walks the network."""
    if not c.model.frozen_stages:
        return None
    from navee_jax.models.stages import freeze_stages

    try:
        freeze_stages(_abstract_model(c), tuple(c.model.frozen_stages))
    except UserError as e:
        return str(e).removeprefix("model.frozen_stages: ")
    return None


def _train_last_blocks(c: ml_collections.ConfigDict) -> str | None:
    """A ViT's blocks to count, not beside model.frozen_stages: models.stages.frozen_stages says which is wrong."""
    if c.model.train_last_blocks < 0:
        return None
    from navee_jax.models.stages import frozen_stages

    try:
        frozen_stages(c.model, _abstract_model(c))
    except UserError as e:
        return str(e).split(": ", 1)[1]  # without its "model.train_last_blocks=n" prefix
    return None


def _init_workdir(c: ml_collections.ConfigDict) -> str | None:
    spec = c.model.init_workdir
    if not spec:
        return None
    if c.get("method", "metric_learning") != "metric_learning":
        return (f"starts a metric-learning run from a trained one, but method={c.method!r} builds its own network: "
                f"set '' (or method='metric_learning')")
    from navee_jax.checkpoints import split_workdir

    workdir, _ = split_workdir(spec)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return f"{workdir!r} is not a trained workdir (no checkpoints/ in it): train it first, or fix the path"
    return None


# (the key a message names, config -> what is wrong or None), checked in order once every RULES key passed.
def _read_only_by(family: str, key: str, default: Any, what: str, use: str = ""
                  ) -> tuple[str, Callable[[ml_collections.ConfigDict], str | None]]:
    """The cross-check of a model key that only `family`'s backbones (a name prefix) read: away from its
    `default` under another backbone it would be ignored."""
    def check(c: ml_collections.ConfigDict) -> str | None:
        if c.model[key] == default or c.model.backbone.startswith(family):
            return None
        return f"{what}, but model.backbone={c.model.backbone!r}: use {use or repr(default)}"

    return f"model.{key}", check


def _whiten(c: ml_collections.ConfigDict) -> str | None:
    if not c.model.whiten:
        return None
    method = c.get("method", "metric_learning")
    if method != "metric_learning":
        return f"is fitted by metric learning's training loop; method={method!r} does not fit it: use 0"
    if loss_entry(c.loss.name).distance is not None:
        return (f"loss.name={c.loss.name!r} ranks images by its own learned score on the embedding, which a "
                f"whitening would change: use 0")
    return None


CROSS: list[tuple[str, Callable[[ml_collections.ConfigDict], str | None]]] = [
    ("method", _method),
    ("loss.name", _loss_name),
    ("sampler.kind", _sampler_kind),
    ("data.root", lambda c: None if c.data.root or c.data.source not in ("folder", "styles_csv") else
     f"data.source={c.data.source!r} reads its images from data.root: pass --config.data.root=/path/to/images"),
    ("data.label_column", lambda c: None if c.data.label_column or c.data.source != "styles_csv" else
     "data.source='styles_csv' needs the styles.csv column that names the class, e.g. 'articleType'"),
    ("data.rotated_classes", lambda c: None if not c.data.rotated_classes or c.split.mode != "stratified" else
     "makes new training classes with no test images, which split.mode='stratified' cannot score; set ()"),
    ("data.label_levels", lambda c: None if not c.data.label_levels or c.data.source == "styles_csv" else
     f"coarser styles.csv columns, but data.source={c.data.source!r}: set () or use data.source='styles_csv'"),
    ("data.tfds_split", lambda c: None if c.data.tfds_split or not c.data.source.startswith("tfds:") else
     f"data.source={c.data.source!r} needs a split, e.g. 'train'"),
    ("data.tfds_label_key", lambda c: None if c.data.tfds_label_key or not c.data.source.startswith("tfds:") else
     f"data.source={c.data.source!r} needs the feature that names the class, e.g. 'label'"),
    ("split.mode", _group_source),  # data.splits.heldout_classes would say so once the data has loaded
    ("split.num_heldout_classes", _drawn_classes),
    ("split.train_groups", lambda c: None if not c.split.train_groups or c.split.mode != "stratified" else
     "chooses the groups whose images train, but split.mode='stratified' tests every class: set ()"),
    ("split.num_heldout_groups", lambda c: None if c.split.num_heldout_groups >= 1 or c.split.mode != "groups"
     or c.split.heldout_groups else "must be >= 1 with split.mode='groups' and split.heldout_groups=() "
                                    "(that many groups are drawn)"),
    ("split.partial_group", lambda c: None if c.split.partial_group or c.split.mode != "partial" else
     "split.mode='partial' needs the seen group that gives up split.num_heldout_classes classes"),
    # make_split would clamp silently: 0 to one support image per class, 1 and above to all but one.
    ("split.support_fraction", lambda c: None if c.split.support_count > 0 or 0 < c.split.support_fraction < 1
     else "must be strictly between 0 and 1 (each held-out class needs support and query images), unless "
          "split.support_count > 0 sets the support images per class instead"),
    ("model.in_channels", lambda c: None if c.model.in_channels == 3 or c.data.grayscale or c.data.binarize else
     "1 needs grayscale images: set data.grayscale=True (or data.binarize=True)"),  # train.step.image_normalizer
    ("model.tta_shift_px", lambda c: None if 2 * c.model.tta_shift_px < c.data.image_size else
     f"model.tta_shift_px={c.model.tta_shift_px} shifts a {c.data.image_size}-pixel image out of view; use less "
     f"than half of data.image_size"),
    _read_only_by("resnet", "pool_grid", 1, "pools a ResNet's last feature map over a grid"),
    _read_only_by("resnet", "num_stages", 4, "leaves out a ResNet's top stages"),
    _read_only_by("conv4", "block_widths", (), "sets conv4's blocks", "model.width, or () here"),
    _read_only_by("conv4", "global_pool", False, "sets conv4's last pool"),
    ("model.whiten", _whiten),
    ("data.image_size", _min_image_size),
    ("model.pretrained", _pretrained_preprocessing),
    ("model.head_hidden", lambda c: None if not c.model.head_hidden or c.model.embed_dim else
     "an MLP head needs a projection: set model.embed_dim > 0, or model.head_hidden=0"),
    ("model.init_workdir", _init_workdir),
    ("method", _method_settings),
    # last: these build the (abstract) network from the checked keys
    ("model.train_last_blocks", _train_last_blocks),
    ("model.frozen_stages", _frozen_stages),
]

_MISSING = object()


def lookup(config: ml_collections.ConfigDict, key: str) -> Any:
    """The value at dotted `key`, or _MISSING."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every dotted key whose value is not a ConfigDict, e.g. 'data.image_size'."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _problem(key: str, value: Any, what: str) -> UserError:
    return UserError(f"config key {key!r} = {value!r}: {what}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first bad key, its value and what is allowed."""
    name = lookup(config, "loss.name")
    if name is _MISSING:
        raise UserError("config key 'loss.name' is missing: pass an experiment config, e.g. "
                        "--config=configs/triplet.py (configs/common.py holds only the shared defaults)")
    for key in LOSS_KEYS.get(name, ()):
        if lookup(config, f"loss.{key}") is _MISSING:
            raise UserError(f"config key 'loss.{key}' is missing: loss.name={name!r} needs it")
    for key, rule in RULES.items():
        value = lookup(config, key)
        if value is not _MISSING and not rule.ok(value):
            hint = f"; e.g. --config.{key}={rule.example!r}" if rule.example else ""
            raise _problem(key, value, f"must be {rule.allowed}{hint}")
    for key, rule_between in CROSS:
        what = rule_between(config)
        if what:
            raise _problem(key, lookup(config, key), what)
