r"""Prototypical networks (Snell, Swersky & Zemel 2017): N-way K-shot training episodes, class
prototypes as the mean support embedding, softmax over negative squared Euclidean distances.

    python launch.py --config=configs/protonet.py --workdir=runs/protonet

On Omniglot (30 Korean characters train, 10 unseen are held out; conv4 backbone, 28x28):

    python launch.py --config=configs/protonet.py:omniglot --workdir=runs/protonet-omniglot

runs in about 28 s on 2 CPU cores and ends with

    final held-out mAP 0.7132 (at initialisation 0.4217) over 100 queries
    4-way 1-shot 1-NN accuracy 0.8345 +- 0.0263 (50 episodes; 0.5860 at initialisation)
    4-way 5-shot 1-NN accuracy 0.9420 +- 0.0137 (50 episodes; 0.6910 at initialisation)
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.sampler.kind = "episodes"
    c.sampler.ways = 5  # training episodes: 5-way (the paper trains Omniglot with 60 ways; digits has 6 classes)
    c.sampler.shots = 5
    c.sampler.queries = 5
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "protonet"
    c.loss.metric = "squared"  # the paper: squared Euclidean distance
    c.model.normalize = False  # prototypes are means of unnormalised embeddings in the paper
    c.optim.lr = 1e-3  # the paper: Adam 1e-3, halved every 2000 episodes
    c.optim.decay_every_epochs = 8
    c.optim.decay_factor = 0.5
    c.train.num_epochs = 12
    return c
