r"""Proxy-anchor loss (Kim et al. 2020) on PK batches: one learned proxy per training class, which learns
with its own, larger learning rate (the paper: 100x the network's).

    python launch.py --config=configs/proxy_anchor.py --workdir=runs/proxy_anchor

On Omniglot (30 Korean characters train, 10 unseen are held out; conv4 backbone, 28x28):

    python launch.py --config=configs/proxy_anchor.py:omniglot --workdir=runs/proxy-omniglot

runs in about 30 s on 2 CPU cores and ends with

    final held-out mAP 0.6634 (at initialisation 0.3571) over 100 queries
    4-way 1-shot 1-NN accuracy 0.7990 +- 0.0255 (50 episodes; 0.5065 at initialisation)
    4-way 5-shot 1-NN accuracy 0.8950 +- 0.0176 (50 episodes; 0.6500 at initialisation)
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "proxy_anchor"
    c.loss.alpha = 32.0  # the paper
    c.loss.delta = 0.1  # the paper
    c.loss.params_lr_multiplier = 100.0  # the paper: proxies learn 100x faster than the network
    c.optim.lr = 1e-4  # the paper
    c.train.num_epochs = 12
    return c
