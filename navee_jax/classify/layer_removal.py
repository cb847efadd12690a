"""Features of a trained network with its top n layers removed (Zhi et al. 2017, the study's figure 15), and the
n x K grid of nearest-neighbour accuracy over seeds that shows which depth transfers best.

Layers count from the top of the classifier (backbone + class head): n = 0 is the class logits, n = 1 the
backbone's features (head removed). Below that, a ResNet loses whole stages (n = 2: the pooled output of its
third stage, ...), a VGG one entry of torchvision's lists at a time (classifier [fc6, ReLU, Dropout, fc7, ReLU,
Dropout], then features, conv / BN / ReLU / pool each one layer); feature maps are averaged over space.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from navee_jax.errors import UserError
from navee_jax.evaluate.classifiers import knn_predict
from navee_jax.models.resnet import ResNet
from navee_jax.models.vgg import POOLED_SIZE, VGG, adaptive_avg_pool

Forward = Callable[[nnx.Module, jax.Array], jax.Array]


def removable_layers(model: nnx.Module) -> int:
    """How many layers `truncated_forward` can remove from `model` (an EmbeddingNet with a ResNet or VGG
    backbone), leaving at least one."""
    backbone = model.backbone
    if isinstance(backbone, ResNet):
        return backbone.num_stages  # head, then all stages but the first
    if isinstance(backbone, VGG):
        return len(backbone.classifier) + len(backbone.features)  # head, classifier entries, all features but one
    raise UserError(f"layer removal: model.backbone {type(backbone).__name__} is not a ResNet or VGG")


def truncated_forward(model: nnx.Module, removed: int) -> Forward:
    """A `forward` for navee_jax.embed.make_embed_fn: the network's output with its top `removed` layers gone."""
    if not 0 <= removed <= removable_layers(model):
        raise UserError(f"layer removal: n={removed} must be in [0, {removable_layers(model)}] for this network")
    if removed == 0:
        return lambda m, x: m(x)
    if removed == 1:
        return lambda m, x: m.backbone(x)
    if isinstance(model.backbone, ResNet):
        stages = model.backbone.num_stages - (removed - 1)

        def resnet(m: nnx.Module, x: jax.Array) -> jax.Array:
            b = m.backbone
            x = b.stem_pool(b.bn1(b.conv1(x)))
            for s in range(stages):
                for block in getattr(b, f"layer{s + 1}"):
                    x = block(x)
            return x.mean(axis=(1, 2))

        return resnet
    below_head = removed - 1
    keep_classifier = len(model.backbone.classifier) - below_head
    keep_features = len(model.backbone.features) + min(keep_classifier, 0)

    def vgg(m: nnx.Module, x: jax.Array) -> jax.Array:
        b = m.backbone
        for layer in list(b.features)[:keep_features]:
            x = layer(x)
        if keep_classifier < 0:  # below the classifier: the feature map, averaged over space
            return x.mean(axis=(1, 2))
        x = adaptive_avg_pool(x, POOLED_SIZE).reshape(x.shape[0], -1)
        for layer in list(b.classifier)[:keep_classifier]:
            x = layer(x)
        return x

    return vgg


def knn_grid(features: dict[int, tuple[np.ndarray, np.ndarray]], pool_labels: np.ndarray, query_labels: np.ndarray,
             shots: tuple[int, ...], seeds: int) -> dict[tuple[int, int], np.ndarray]:
    """{(n, K): 1-NN accuracy per seed}: for each seed, K reference images per class drawn from the pool, every
    query scored against them. `features[n]` = (pool features, query features) with n layers removed. Classes
    are those with at least max(shots) pool images and one query, the same for every cell; a seed draws the
    same references at every n."""
    counts = np.bincount(pool_labels)
    classes = [c for c in np.unique(query_labels) if c < len(counts) and counts[c] >= max(shots)]
    if len(classes) < 2:
        raise UserError(f"layer removal: fewer than 2 classes with >= {max(shots)} pool images and a query")
    queries = np.flatnonzero(np.isin(query_labels, classes))
    out: dict[tuple[int, int], np.ndarray] = {}
    for k in shots:
        picks = []
        for seed in range(seeds):
            rng = np.random.default_rng([seed, k])
            picks.append(np.concatenate([rng.choice(np.flatnonzero(pool_labels == c), k, replace=False)
                                         for c in classes]))
        for n, (pool, query) in features.items():
            accuracy = []
            for refs in picks:
                predicted = knn_predict(pool[refs][None], pool_labels[refs][None], query[queries][None], k=1,
                                        num_classes=int(pool_labels.max()) + 1)[0]
                accuracy.append(float(np.mean(np.asarray(predicted) == query_labels[queries])))
            out[(n, k)] = np.asarray(accuracy)
    return out
