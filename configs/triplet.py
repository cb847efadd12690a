r"""Triplet loss with batch-hard mining on PK batches, ResNet-18 + 256-d L2-normalised embedding.

Default data: scikit-learn's bundled digits; classes 0-5 train, 6-9 are held out (support/query).

    python launch.py --config=configs/triplet.py --workdir=runs/triplet

runs in about 3 minutes on 2 CPU cores and prints the held-out mAP at initialisation (0.7272), a
progress line every 10 steps (`step 20/276 epoch 1/12 loss 0.1849 ... | 2.89 steps/s ETA 0:01:28`),
the held-out mAP after each epoch, and at the end

    final held-out mAP 0.4851 (at initialisation 0.7272) over 357 queries
    4-way 1-shot 1-NN accuracy 0.4347 +- 0.0312 (50 episodes; 0.7063 at initialisation)
    4-way 5-shot 1-NN accuracy 0.6057 +- 0.0214 (50 episodes; 0.8543 at initialisation)

also written to runs/triplet/metrics.json. Six base classes are too few for the learned metric to
beat a random network on the four unseen digits (docs/results.md); on Omniglot it does. Re-running the
same command resumes from the latest checkpoint.

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
    c.train.num_epochs = 12
    c.optim.decay_every_epochs = 8
    return c
