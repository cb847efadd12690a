r"""Multi-similarity loss with its pair mining (Wang et al. 2019) on PK batches of L2-normalised embeddings.

    python launch.py --config=configs/multi_similarity.py --workdir=runs/multi_similarity

On Omniglot (30 Korean characters train, 10 unseen are held out; conv4 backbone, 28x28):

    python launch.py --config=configs/multi_similarity.py:omniglot --workdir=runs/ms-omniglot

runs in about 29 s on 2 CPU cores and ends with

    final held-out mAP 0.6621 (at initialisation 0.3571) over 100 queries
    4-way 1-shot 1-NN accuracy 0.8125 +- 0.0273 (50 episodes; 0.5065 at initialisation)
    4-way 5-shot 1-NN accuracy 0.8955 +- 0.0154 (50 episodes; 0.6500 at initialisation)
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "multi_similarity"
    c.loss.alpha = 2.0  # the paper: positive scale
    c.loss.beta = 50.0  # the paper: negative scale
    c.loss.base = 0.5  # lambda: 0.5 in the authors' released code (the paper's text says 1)
    c.loss.epsilon = 0.1  # the paper: pair-mining margin
    c.optim.lr = 1e-4
    c.train.num_epochs = 12
    return c
