"""docs/fashion.md's sweeps: the study's one-at-a-time sweeps of the contrastive siamese network (figures 24-29:
lr, p_same, margin, p_mining, embedding size, frozen stages) and its backbones (figure 16), on the unseen types
(`configs/contrastive.py:fashion_types_unseen`), each one `launch.py --sweep` command.

    python bench/fashion_sweeps.py [--root runs/fashion/sweeps] [--only lr,margin] [--figures docs/figures/fashion]

Each sweep trains into <root>/<name>/<setting>/ and writes its sweep.md, sweep.json and sweep.png (the best held-out
mAP against the value); a finished setting is kept, an unfinished one resumes. The study's setting of each key
(the config's default) is trained once, in <root>/default, and linked into every sweep. The best held-out mAP of
every setting is printed and written to <root>/table.md; --figures copies each sweep.png there as sweep_<name>.png.
Needs ../shared/data/fashion_product_images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.fashion_table import STAGE2  # noqa: E402
from bench.runs import chosen, launch, train, write_table  # noqa: E402
from configs.common import FASHION  # noqa: E402
from navee_jax.launcher.sweep import draw_sweep, setting_name  # noqa: E402

CONFIG = "--config=configs/contrastive.py:fashion_types_unseen"
# The shallow network that matched HOG on the unseen types, 6 epochs (x0.1 after 4): about 2 minutes a setting.
BASE = [CONFIG, *STAGE2, "--config.optim.lr=1e-3", "--config.train.num_epochs=6",
        "--config.optim.decay_every_epochs=4"]
# name -> (key, values, the default's value (trained once, in <root>/default), extra overrides)
SWEEPS = {
    "lr": ("optim.lr", [1e-4, 3e-4, 1e-3, 3e-3], 1e-3, []),
    "p_same": ("sampler.p_same", [0.2, 0.4, 0.6, 0.8], 0.4, []),
    "margin": ("loss.margin", [0.5, 1.0, 2.0, 4.0], 2.0, []),
    "p_mining": ("loss.p_mining", [0.25, 0.5, 1.0], 0.5, []),
    "embed_dim": ("model.embed_dim", [32, 128, 256, 1024], 256, []),
    # From scratch the frozen stages keep their random weights (the study's were ImageNet's).
    "frozen_stages": ("model.frozen_stages", [(), ("conv1", "bn1"), ("conv1", "bn1", "layer1")], (), []),
    # Figure 16: whole networks, at 72x72, the smallest size Koch's network takes above 64.
    "backbone": ("model.backbone", ["koch", "resnet18", "resnet50"], None,
                 ["--config.model.num_stages=4", "--config.model.pool_grid=1", "--config.data.image_size=72"]),
}


def sweep(root: str, name: str) -> list[dict]:
    key, values, default, extra = SWEEPS[name]
    workdir = os.path.join(root, name)
    if default is not None:  # the shared default run, linked in as this sweep's setting of it
        train(BASE, os.path.join(root, "default"))
        link = os.path.join(workdir, setting_name({key: default}))
        os.makedirs(workdir, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "default"), link)
    if not os.path.exists(os.path.join(workdir, "sweep.json")):
        launch([*BASE, *extra, f"--workdir={workdir}", f"--sweep={key}={list(values)!r}"])
    with open(os.path.join(workdir, "sweep.json")) as f:
        rows = json.load(f)
    draw_sweep(rows, path=os.path.join(workdir, "sweep.png"))  # redrawn: the figure follows the code
    return rows


def table(rows: dict[str, list[dict]]) -> str:
    lines = ["| sweep | setting | best held-out mAP | at epoch |", "|---|---|---|---|"]
    for name, sweep_rows in rows.items():
        for r in sweep_rows:
            (key, value), = r["setting"].items()
            lines.append(f"| {name} | {key}={value} | {r['best_map']:.4f} | {r['best_epoch']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(REPO, "runs", "fashion", "sweeps"))
    p.add_argument("--only", default=",".join(SWEEPS), help="comma-separated sweeps, of: " + ", ".join(SWEEPS))
    p.add_argument("--figures", default="", help="a folder to copy each sweep.png into as sweep_<name>.png")
    a = p.parse_args()
    if not os.path.isdir(FASHION):
        sys.exit(f"skipped: {FASHION} is absent (the shared fashion photos, ../shared/data)")
    rows = {name: sweep(a.root, name) for name in chosen("--only", a.only, SWEEPS)}
    if a.figures:
        for name in rows:
            shutil.copyfile(os.path.join(a.root, name, "sweep.png"), os.path.join(a.figures, f"sweep_{name}.png"))
    write_table(a.root, table(rows))


if __name__ == "__main__":
    main()
