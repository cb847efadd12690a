r"""Triplet loss with batch-hard mining on PK batches, ResNet-18 + 256-d L2-normalised embedding.

Default data: scikit-learn's bundled digits; classes 0-5 train, 6-9 are held out (support/query).

    python launch.py --config=configs/triplet.py --workdir=runs/triplet

prints the held-out mAP at initialisation, a progress line every 10 steps
(`step 20/230 epoch 1/10 loss 0.21 ... | 3.1 steps/s ETA 0:01:10`), the held-out mAP after each
epoch, and at the end the final mAP and 4-way 1-/5-shot 1-NN accuracy, also written to
runs/triplet/metrics.json. Re-running the same command resumes from the latest checkpoint.

Your own images (root/<class>/*.jpg), 20 classes held out at random:

    python launch.py --config=configs/triplet.py --workdir=runs/mine \
      --config.data.source=folder --config.data.root=/path/to/images \
      --config.split.heldout_classes="()" --config.split.num_heldout_classes=20 \
      --config.data.image_size=224 --config.sampler.classes_per_batch=16 --config.sampler.images_per_class=4
"""

import ml_collections

from configs import common


def get_config():
    c = common.get_config()
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "batch_hard_triplet"
    c.loss.margin = 0.2
    c.loss.squared = False  # Euclidean (not squared) distances, as in Hermans et al.
    # Deep metric learning keeps BatchNorm statistics fixed: statistics of PK batches of a few base
    # classes do not transfer to unseen classes (on digits, trained BatchNorm statistics lose more
    # held-out mAP than training gains; see docs/results.md).
    c.model.frozen_batchnorm = True
    c.train.num_epochs = 12
    c.optim.decay_every_epochs = 8
    return c
