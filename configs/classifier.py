r"""A supervised classifier (the study's classical route): a backbone + softmax head over `data.label_column`'s
classes, cross-entropy on shuffled batches, scored by accuracy on a stratified split (every class's images
divided 70 / 10 / 20 into train / validation / test by the seed; the validation part picks the checkpoint).

    python launch.py --config=configs/classifier.py --workdir=runs/classifier

trains on the glyphs default (130 letters x 16 fonts). On the shared fashion photos, articleType classes also
scored at subCategory and masterCategory (a predicted type read as its type's usual category):

    python launch.py --config=configs/classifier.py:fashion --workdir=runs/classical/cnn_seed0

`:fashion224` is the study's input size for a GPU (ResNet-50 from `--config.model.pretrained=...`, as the study
fine-tunes ImageNet weights). docs/classical.md has the commands, the times and the numbers.
"""

import os

import ml_collections

from configs import common

FASHION = os.path.normpath(os.path.join(common.SHARED_DATA, "fashion_product_images"))
VARIANTS = ("", "fashion", "fashion224")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {VARIANTS}")
    c = common.get_config("" if variant.startswith("fashion") else variant)
    c.method = "classifier"  # navee_jax.classify.method
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "softmax_cross_entropy"
    c.loss.label_smoothing = 0.0
    c.split.mode = "stratified"
    c.sampler.kind = "shuffled"
    c.sampler.batch_size = 64
    c.optim.lr = 1e-3
    c.optim.decay_every_epochs = 8
    c.optim.decay_factor = 0.1
    c.train.num_epochs = 12
    if variant.startswith("fashion"):
        c.data.source = "styles_csv"
        c.data.root = FASHION
        c.data.label_column = "articleType"
        c.data.label_levels = ("subCategory", "masterCategory")
        c.data.image_size = 64
        c.data.flip = True
        c.data.rotation_deg = 10.0
        c.data.crop_scale_min = 0.8  # the study's augmentation: flips, small rotations, random crops
        # ResNet-18 at half width from scratch, the CPU budget of docs/classical.md (about 12 min a seed on 2
        # cores): 16 epochs at 1e-3, 8 at 1e-4, targets smoothed by 0.1
        c.model.width = 32
        c.train.num_epochs = 24
        c.optim.decay_every_epochs = 16
        c.loss.label_smoothing = 0.1
    if variant == "fashion224":
        c.data.image_size = 224
        c.model.backbone = "resnet50"
        c.model.width = 64
    return c
