r"""Siamese training with the contrastive loss (Hadsell, Chopra & LeCun 2005), the study's setup: pairs
that are positive with probability p_same, margin m, and online hard mining that trains only on the
top p_mining fraction of the pair losses of each batch. Defaults are the study's where it states them.

    python launch.py --config=configs/contrastive.py --workdir=runs/contrastive

On Omniglot (30 Korean characters train, 10 unseen are held out; conv4 backbone, 28x28):

    python launch.py --config=configs/contrastive.py:omniglot --workdir=runs/contrastive-omniglot

runs in about 29 s on 2 CPU cores and ends with

    final held-out mAP 0.4676 (at initialisation 0.4217) over 100 queries
    4-way 1-shot 1-NN accuracy 0.6380 +- 0.0338 (50 episodes; 0.5860 at initialisation)
    4-way 5-shot 1-NN accuracy 0.7490 +- 0.0291 (50 episodes; 0.6910 at initialisation)

The study's learning rate is slow for so short a run: `--sweep="optim.lr=[5e-5, 1e-3]"` gives the
best held-out mAP 0.4741 and 0.5226 (docs/results.md). `--config.sampler.kind=pk` applies the same loss
to all pairs of PK batches instead of sampled pairs.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.sampler.kind = "pairs"
    c.sampler.tuples_per_batch = 32  # pairs per batch
    c.sampler.p_same = 0.4  # the study
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "contrastive"
    c.loss.margin = 2.0  # the study; distances between unnormalised embeddings
    c.loss.p_mining = 0.5  # the study: train on the top half of the pair losses of each batch
    c.model.normalize = False  # a margin of 2 needs room: L2-normalised embeddings are never 2 apart
    c.model.embed_dim = 256  # the study
    c.optim.lr = 5e-5  # the study
    c.optim.decay_every_epochs = 30  # the study: learning rate / 10 every 30 epochs
    c.train.num_epochs = 12
    return c
