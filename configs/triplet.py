r"""Triplet loss with online mining (batch-hard by default) on PK batches, ResNet-18 + 256-d L2-normalised embedding.

Default data: glyphs (Latin, Greek and Cyrillic letters in matplotlib's 16 fonts); 100 letters train, 30
unseen ones are held out (support/query).

    python launch.py --config=configs/triplet.py --workdir=runs/triplet

runs in about 3 minutes on 2 CPU cores and prints the held-out mAP at initialisation (0.4339), a
progress line every 10 steps, the held-out mAP after each epoch, and at the end

    final held-out mAP 0.8230 (at initialisation 0.4339) over 240 queries
    4-way 1-shot 1-NN accuracy 0.9650 +- 0.0190 (50 episodes; 0.7325 at initialisation)
    4-way 5-shot 1-NN accuracy 0.9938 +- 0.0052 (50 episodes; 0.9106 at initialisation)

also written to runs/triplet/metrics.json (2-core AMD EPYC host). Re-running the same command resumes from
the latest checkpoint. `configs/triplet.py:digits` is scikit-learn's digits, classes 0-5 train and 6-9 are
held out: six base classes are too few for the learned metric to beat a random network there
(docs/results.md).

On Omniglot (30 Korean characters train, 10 unseen are held out; Conv-4 at 28x28), in about 28 s:

    python launch.py --config=configs/triplet.py:omniglot --workdir=runs/triplet-omniglot

    final held-out mAP 0.9286 (at initialisation 0.3571) over 100 queries
    4-way 1-shot 1-NN accuracy 0.9535 +- 0.0167 (50 episodes; 0.5065 at initialisation)
    4-way 5-shot 1-NN accuracy 0.9890 +- 0.0053 (50 episodes; 0.6500 at initialisation)

Your own images (root/<class>/*.jpg), 20 classes held out at random:

    python launch.py --config=configs/triplet.py --workdir=runs/mine \
      --config.data.source=folder --config.data.root=/path/to/images --config.data.flip=True \
      --config.split.heldout_classes="()" --config.split.num_heldout_classes=20 \
      --config.data.image_size=224 --config.sampler.classes_per_batch=16 --config.sampler.images_per_class=4
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "triplet"
    c.loss.margin = 0.2
    # batch_hard (Hermans et al. 2017) | batch_all | semi_hard (Schroff et al. 2015) | top_fraction (the
    # study: the top_fraction highest triplet losses of the batch); sampler.kind='triplets' trains on
    # random triplets from the data layer instead of mining a PK batch.
    c.loss.miner = "batch_hard"
    c.loss.top_fraction = 0.5
    c.loss.metric = "euclidean"  # euclidean (Hermans et al.) | squared (the study, FaceNet) | cosine
    c.train.num_epochs = 12
    c.optim.decay_every_epochs = 8
    return c
