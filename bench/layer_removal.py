r"""Layer removal (the study's figure 15, Zhi et al. 2017): a trained classifier's features with its top n layers
removed, scored by 1-NN with K reference images per class (K = 1, 2, 3, 5, 10, 20) over 20 seeds, as a heatmap
and a table (docs/classical.md).

    python bench/layer_removal.py [runs/classical/cnn_seed0] [--seeds=20] [--layers=0,1,2,3,4]

References are drawn from the classifier's training images, queries are its test images (the label level it
was trained on), classes with at least 20 training images and a test image. Without downloadable ImageNet weights
the "pretrained" network is the one the classifier method trained on these classes; a workdir trained from
`model.pretrained` weights uses them. Writes `<workdir>/layer_removal/{heatmap.png, table.md, grid.json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHOTS = (1, 2, 3, 5, 10, 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", nargs="?", default=os.path.join(REPO, "runs", "classical", "cnn_seed0"))
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--layers", default="", help="comma-separated n; default: every removable layer")
    a = p.parse_args()
    from navee_jax.classify.layer_removal import knn_grid, removable_layers
    from navee_jax.classify.trained import TrainedClassifier
    from navee_jax.evaluate.classification_figures import layer_removal_heatmap
    from navee_jax.launcher.train import prepare_data

    classifier = TrainedClassifier.load(a.workdir)
    catalogue, split = prepare_data(classifier.config)
    layers = [int(n) for n in a.layers.split(",")] if a.layers else list(range(removable_layers(classifier.model) + 1))
    features = {n: (classifier.truncated_features(catalogue, split.train, n),
                    classifier.truncated_features(catalogue, split.test, n)) for n in layers}
    cells = knn_grid(features, catalogue.labels[split.train], catalogue.labels[split.test], SHOTS, a.seeds)
    out = os.path.join(a.workdir, "layer_removal")
    os.makedirs(out, exist_ok=True)
    what = f"{classifier.config.model.backbone} classifier ({classifier.config.data.label_column})"
    layer_removal_heatmap(cells, os.path.join(out, "heatmap.png"),
                          f"{what}: 1-NN accuracy, {a.seeds} seeds per cell")
    dims = {n: f[0].shape[1] for n, f in features.items()}
    lines = ["| n removed (feature size) | " + " | ".join(f"K={k}" for k in SHOTS) + " |",
             "|---|" + "---|" * len(SHOTS)]
    for n in layers:
        lines.append(f"| {n} ({dims[n]}) | " + " | ".join(
            f"{100 * cells[(n, k)].mean():.1f} +- {196 * cells[(n, k)].std() / np.sqrt(a.seeds):.1f}"
            for k in SHOTS) + " |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "grid.json"), "w") as f:
        json.dump({f"{n},{k}": v.tolist() for (n, k), v in cells.items()}, f)
    print("\n".join(lines))
    print(f"wrote {out}/heatmap.png, table.md, grid.json")


if __name__ == "__main__":
    main()
