r"""A supervised classifier (the study's classical route): a backbone + softmax head over `data.label_column`'s
classes, cross-entropy on shuffled batches, scored by accuracy on a stratified split (every class's images
divided 70 / 10 / 20 into train / validation / test by the seed; the validation part picks the checkpoint).

    python launch.py --config=configs/classifier.py --workdir=runs/classifier

trains on the glyphs default (130 letters x 16 fonts). On the shared fashion photos, articleType classes also
scored at subCategory and masterCategory (a predicted type read as its type's usual category):

    python launch.py --config=configs/classifier.py:fashion --workdir=runs/classical/cnn_seed0

`:fashion224` is the study's input size for a GPU (ResNet-50 from `--config.model.pretrained=...`, as the study
fine-tunes ImageNet weights). docs/classical.md has the commands, the times and the numbers.

The few-shot fashion variants of configs/common.py (`:fashion_types_unseen`, ...) train the same classifier on
the training classes of that split; its L2-normalised backbone features are then evaluated on the held-out
classes like any embedding (the classical baseline of docs/fashion.md).
"""

import ml_collections

from configs import common

VARIANTS = ("", "fashion", "fashion224", *common.FASHION_VARIANTS)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {VARIANTS}")
    few_shot = variant in common.FASHION_VARIANTS
    # :fashion is the few-shot variants' data, model and augmentation on a stratified split of every type
    c = common.get_config("fashion_types_unseen" if variant in ("fashion", "fashion224") else variant)
    c.method = "classifier"  # navee_jax.classify.method
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "softmax_cross_entropy"
    c.loss.label_smoothing = 0.0
    if not few_shot:
        c.split.mode = "stratified"
    c.sampler.kind = "shuffled"
    c.sampler.batch_size = 64
    c.optim.lr = 1e-3
    c.optim.decay_every_epochs = 8
    c.optim.decay_factor = 0.1
    c.train.num_epochs = 12
    if variant.startswith("fashion"):
        if not few_shot:
            c.data.label_levels = ("subCategory", "masterCategory")
        # ResNet-18 at half width from scratch, the CPU budget of docs/classical.md (about 12 min a seed on 2
        # cores): 16 epochs at 1e-3, 8 at 1e-4, targets smoothed by 0.1
        c.train.num_epochs = 24
        c.optim.decay_every_epochs = 16
        c.loss.label_smoothing = 0.1
    if variant == "fashion224":
        c.data.image_size = 224
        c.model.backbone = "resnet50"
        c.model.width = 64
    return c
