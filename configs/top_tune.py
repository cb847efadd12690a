r"""Top-tuning (`method='top_tune'`): a frozen backbone embeds the training images once, the features are cached
on disk (`top.cache_dir`, keyed by the images' contents, the weights and the preprocessing), and the embedding
head (`model.embed_dim`) trains on them with the batch-hard triplet loss of configs/triplet.py (any loss of PK
batches: `--config.loss.name=multi_similarity` and its keys from configs/multi_similarity.py).

    python launch.py --config=configs/top_tune.py:fashion_types_unseen --workdir=runs/top-tune \
      --config.model.backbone=vit_b16 --config.model.pretrained=path/to/dinov2-base --config.data.image_size=224

`--config.top.views=4` caches the plain image and 3 augmented views of each (each PK batch draws one view per
image), `--config.model.head_hidden=512` makes the head an MLP. The evaluation, the checkpoints and the Recognizer
use the backbone and the head together.

Then, if it pays, unfreeze the last blocks: a metric-learning run that starts from the top-tuned model and trains
its last n blocks, final norm and head on the images (at a lower learning rate):

    python launch.py --config=configs/triplet.py:fashion_types_unseen --workdir=runs/top-tune-last2 \
      --config.model.backbone=vit_b16 --config.model.pretrained=path/to/dinov2-base --config.data.image_size=224 \
      --config.model.init_workdir=runs/top-tune --config.model.train_last_blocks=2 --config.optim.lr=1e-5
"""

import ml_collections

from configs import triplet


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = triplet.get_config(variant)
    c.method = "top_tune"
    c.optim.lr = 1e-3
    c.train.num_epochs = 30  # an epoch is the head on cached features: a fraction of a second
    c.optim.decay_every_epochs = 20
    return c
