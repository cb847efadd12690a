r"""Siamese verification network (Koch, Zemel & Salakhutdinov 2015): the Koch CNN as a twin, a learned weighted
L1 distance between the twins' 4096 sigmoid features, p(same) = sigmoid(alpha . |h1 - h2| + b), trained on
same / different pairs with binary cross-entropy (navee_jax.losses.verification). One-shot decisions, retrieval
and the held-out evaluation rank support images by that verification score, not by a Euclidean distance.

    python launch.py --config=configs/siamese.py:omniglot_background --workdir=runs/siamese

is the paper's setting on Omniglot's background set: 105x105 one-channel drawings, Koch's affine distortions,
pairs half same and half different; Adam instead of the paper's per-layer momentum SGD. That network costs
about 2.6 GFLOP per image forward; on a 2-core CPU train it smaller (docs/omniglot.md has the run of the
table), e.g. `--config.data.image_size=72 --config.model.width=32`.

Other variants (glyphs, digits) use the least input size its unpadded convolutions take, 65x65.
"""

import ml_collections

from configs import common


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = common.get_config(variant)
    c.sampler.kind = "pairs"
    c.sampler.tuples_per_batch = 32  # pairs per batch
    c.sampler.p_same = 0.5  # the paper's verification set: half same, half different
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "verification"
    c.model.backbone = "koch"
    c.model.embed_dim = 0  # the twin's own 4096 sigmoid features are the embedding
    c.model.normalize = False
    c.model.in_channels = 1  # the paper's one-channel input
    c.data.grayscale = True
    c.data.image_size = 105 if variant.startswith("omniglot") else 65
    c.data.affine = variant.startswith("omniglot")  # Koch's distortions (his Omniglot training)
    c.optim.lr = 1e-4
    c.train.num_epochs = 12
    c.optim.decay_every_epochs = 8
    return c
