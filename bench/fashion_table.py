"""docs/fashion.md's table 4: every method trained on the fashion photos, evaluated on the held-out classes of
both test sets at both granularities (configs/common.py's `fashion_{types,articles}_{seen,unseen}` variants),
beside HOG, raw pixels and the untrained network measured by the same code on the same images.

    python bench/fashion_table.py [--root runs/fashion] [--only triplet,classifier] [--variants fashion_types_unseen]
                                  [--mlp]

For each variant and method: `python launch.py --config=configs/<config>.py:<variant>
--workdir=<root>/<variant>/<method> <its overrides>` (skipped when the workdir holds a finished run; an
unfinished one resumes), its wall time kept in train_seconds.json; then the same command with `--mode=evaluate`
and the grid below (skipped when its report exists): retrieval mAP, 5-way 1-/5-shot over 600 episodes, the N x K
1-NN grid (its heatmap and its average) for the trained network and each baseline. The tables are printed and
written to <root>/table.md; with --mlp, the standard protocol also with the PCA + MLP classifier (the study's 1-NN
against PCA + MLP) and its table. Needs ../shared/data/fashion_product_images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.runs import chosen, launch, train_and_evaluate, training_minutes, write_table  # noqa: E402
from configs.common import FASHION, FASHION_VARIANTS  # noqa: E402
from navee_jax.evaluate.records import grid_average  # noqa: E402

# name -> (config, overrides, how it was trained), on every variant: ResNet-18 at half width at 64x64 (the
# variants') unless said otherwise, each sized to about 10 minutes of 2 CPU cores.
SCHEDULE = ["--config.train.num_epochs=16", "--config.optim.decay_every_epochs=10"]  # x0.1 after 10 of 16
STAGE2 = ["--config.model.num_stages=2", "--config.model.pool_grid=8", "--config.data.grayscale=True"]
STAGE2_HOW = "ResNet-18's first two stages, the 8x8 map kept whole, grey input"
SHORT = ["--config.train.num_epochs=8", "--config.optim.decay_every_epochs=6"]  # x0.1 after 6 of 8
LONG = ["--config.train.num_epochs=16", "--config.optim.decay_every_epochs=12"]  # x0.1 after 12 of 16
RUNS = {
    "triplet": ("triplet", SCHEDULE, "batch-hard, P=16 x K=4; Adam 1e-3, x0.1 after 10 epochs; 16 epochs"),
    "classifier": ("classifier", SCHEDULE,
                   "softmax over the training classes, targets smoothed by 0.1, batches of 64; its backbone's "
                   "L2-normalised features; Adam 1e-3, x0.1 after 10 epochs; 16 epochs"),
    # Product photos are centred on white, and HOG keeps where each gradient is; the same for the network's
    # features (the last 2x2 map kept as 4 regions, `model.pool_grid=2`), and colour, which does not name a type,
    # dropped (`data.grayscale`); 8 epochs, as the run above was best at epoch 9 of 16 on the unseen types.
    "classifier_grid_gray": ("classifier", ["--config.model.pool_grid=2", "--config.data.grayscale=True", *SHORT],
                             "the classifier above with the last feature map pooled over 2x2 regions and grey "
                             "input; x0.1 after 6 epochs; 8 epochs"),
    # Deeper is not better on the unseen types: the third stage's whole 4x4 map (or the second's 8x8) of the run
    # above beat its last stage's 2x2 regions by 3-4 points at 5-way 1-shot; the same trained as the network.
    "classifier_stage3_grid4": ("classifier", ["--config.model.num_stages=3", "--config.model.pool_grid=4",
                                               "--config.data.grayscale=True", *SHORT],
                                "classifier_grid_gray's recipe on ResNet-18's first three stages, the third's 4x4 "
                                "map kept whole (`model.num_stages=3`, `model.pool_grid=4`)"),
    "classifier_stage2_grid8": ("classifier", [*STAGE2, *SHORT],
                                "the same on the first two stages, the second's 8x8 map kept whole"),
    "classifier_stage2_grid8_long": ("classifier", [*STAGE2, *LONG],
                                     "the same, 16 epochs, x0.1 after 12 (the 8-epoch run was still improving)"),
    "classifier_stage2_grid8_wide": ("classifier", [*STAGE2, "--config.model.width=64", *LONG],
                                     "the same at ResNet-18's full width (64-128 filters: 8,192 features)"),
    # Shallower again: the first stage's whole 16x16 map; and the two-stage run longer (it was best at its last epoch).
    "classifier_stage1_grid16": ("classifier", ["--config.model.num_stages=1", "--config.model.pool_grid=16",
                                                "--config.data.grayscale=True", *LONG],
                                 "classifier_stage2_grid8_long's recipe on ResNet-18's first stage, its 16x16 map "
                                 "kept whole (8,192 features)"),
    "classifier_stage2_grid8_24ep": ("classifier", [*STAGE2, "--config.train.num_epochs=24",
                                                    "--config.optim.decay_every_epochs=18"],
                                     "classifier_stage2_grid8_long for 24 epochs, x0.1 after 18"),
    # The study's figure 30: one group trains (Apparel: 5,234 of the 7,404 photos, 33 of the 46 types).
    "classifier_stage2_apparel_only": ("classifier", [*STAGE2, *LONG, "--config.split.train_groups=('Apparel',)"],
                                       "classifier_stage2_grid8_long trained on Apparel only "
                                       "(`split.train_groups`), not Footwear and the rest"),
    # Larger input for the network and HOG alike: the second stage's whole 12x12 map of a 96x96 photo.
    "classifier_stage2_96px": ("classifier", ["--config.model.num_stages=2", "--config.model.pool_grid=12",
                                              "--config.data.image_size=96", "--config.data.grayscale=True", *LONG],
                               "classifier_stage2_grid8_long at 96x96, the 12x12 map kept whole (9,216 features)"),
    # Every loss on the shallow network that matched HOG on the unseen types (16 epochs, x0.1 after 12).
    **{f"{method}_stage2": (method, [*STAGE2, *overrides, *LONG], f"{how}; on {STAGE2_HOW}")
       for method, overrides, how in [
           ("triplet", ["--config.optim.lr=3e-4"], "batch-hard, P=16 x K=4; Adam 3e-4 (1e-3 collapsed)"),
           ("multi_similarity", ["--config.optim.lr=1e-3"], "P=16 x K=4, the authors' settings; Adam 1e-3"),
           ("proxy_anchor", ["--config.optim.lr=1e-3"], "proxies 100x faster, alpha 32, delta 0.1; Adam 1e-3"),
           ("protonet", ["--config.sampler.ways=16", "--config.sampler.shots=2", "--config.sampler.queries=2"],
            "16-way 2-shot episodes, 2 queries per class; Adam 1e-3"),
           ("contrastive", ["--config.optim.lr=1e-3"], "32 pairs a batch, the study's p_same, margin and mining; "
                                                        "Adam 1e-3")]},
    "contrastive": ("contrastive", ["--config.optim.lr=1e-3", *SCHEDULE],
                    "32 pairs a batch, p_same 0.4, margin 2, top half mined (the study's); Adam 1e-3 (the study's "
                    "5e-5 is too slow for this budget), x0.1 after 10 epochs; 16 epochs"),
    "protonet": ("protonet", ["--config.sampler.ways=16", "--config.sampler.shots=2", "--config.sampler.queries=2",
                              *SCHEDULE],
                 "16-way 2-shot episodes, 2 queries per class (64 images, as the others' batches); Adam 1e-3, x0.1 "
                 "after 10 epochs; 16 epochs"),
    "multi_similarity": ("multi_similarity", ["--config.optim.lr=1e-3", *SCHEDULE],
                         "P=16 x K=4, alpha 2, beta 50, lambda 0.5, epsilon 0.1 (the authors' code); Adam 1e-3, x0.1 "
                         "after 10 epochs; 16 epochs"),
    "proxy_anchor": ("proxy_anchor", ["--config.optim.lr=1e-3", *SCHEDULE],
                     "one proxy per training class learning 100x faster, P=16 x K=4, alpha 32, delta 0.1 (the "
                     "paper's); Adam 1e-3, x0.1 after 10 epochs; 16 epochs"),
    # Issue 20's pipeline without real weights: a frozen randomly initialised ViT-S/16, its head top-tuned on cached
    # features (configs/top_tune.py); with a foundation model's weights it is `--config.model.pretrained=<dir>`.
    "top_tune_vit_s16": ("top_tune", ["--config.model.backbone=vit_s16", "--config.train.num_epochs=10",
                                      "--config.optim.decay_every_epochs=7"],
                         "frozen randomly initialised ViT-S/16 at 64x64, a linear head (256) top-tuned on its cached "
                         "features, batch-hard P=16 x K=4; Adam 1e-3, x0.1 after 7 epochs; 10 epochs"),
    # ... then its last 2 blocks (and final norm and head) fine-tuned on the images, from that run's best checkpoint.
    "top_tune_vit_s16_last2": ("triplet", ["--config.model.backbone=vit_s16", "--config.model.train_last_blocks=2",
                                           "--config.model.init_workdir={runs}/top_tune_vit_s16",
                                           "--config.optim.lr=1e-4", "--config.train.num_epochs=3",
                                           "--config.optim.decay_every_epochs=2"],
                               "top_tune_vit_s16, then its last 2 blocks, final norm and head trained on the images "
                               "(`model.train_last_blocks=2`, `model.init_workdir`), batch-hard P=16 x K=4; Adam "
                               "1e-4, x0.1 after 2 epochs; 3 epochs"),
    "maml": ("maml", ["--config.loss.first_order=True", "--config.sampler.tasks_per_batch=8",
                      "--config.train.steps_per_epoch=100", "--config.train.num_epochs=5"],
             "first-order, Conv-4, 5-way 1-shot, meta-batch 8, inner lr 0.4, 1 inner step (3 at test); 500 "
             "meta-steps"),
}
BASELINES = ("HOG", "raw pixels", "untrained network")
EVALUATE = ["--mode=evaluate", "--config.eval.episodes=200", "--config.eval.standard_episodes=600",
            "--config.eval.classifiers=('1nn',)"]
# --mlp: the study's other classifier beside 1-NN on the standard protocol (a PCA + MLP tuned on each episode's
# validation queries); the grid, seeded, is the same.
EVALUATE_MLP = [*EVALUATE[:-1], "--config.eval.classifiers=('1nn', 'mlp')"]


def _percent(cell: dict | None) -> str:
    return "" if cell is None or cell.get("mean") is None else f"{100 * cell['mean']:.1f} +- {100 * cell['ci95']:.1f}"


def row(name: str, source: dict, minutes: str = "") -> str:
    standard = {(c["ways"], c["shots"]): c for c in source["standard"] if c["classifier"] == "1nn"}
    return (f"| {name} | {source['retrieval']['map']:.3f} | {_percent(standard.get((5, 1)))} | "
            f"{_percent(standard.get((5, 5)))} | {_percent(grid_average(source['grid']))} | {minutes} |")


def _report(root: str, variant: str, name: str) -> dict | None:
    path = os.path.join(root, variant, name, "report", "report.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _has_mlp(report: dict | None) -> bool:
    return report is not None and any(c["classifier"] == "mlp" for source in report["sources"].values()
                                      for c in source["standard"])


def mlp_table(root: str, variant: str) -> list[str]:
    """1-NN against PCA + MLP at 5-way 1-/5-shot, for every run evaluated with --mlp and its baselines."""
    lines = [f"### {variant}: 1-NN and PCA + MLP", "", "| features | 1-shot 1-NN | 1-shot PCA+MLP | 5-shot 1-NN | "
             "5-shot PCA+MLP |", "|---|---|---|---|---|"]
    for name in RUNS:
        report = _report(root, variant, name)
        if not _has_mlp(report):
            continue
        for source, results in report["sources"].items():
            cells = {(c["classifier"], c["shots"]): c for c in results["standard"] if c["ways"] == 5}
            lines.append(f"| {name}: {source} | " + " | ".join(_percent(cells.get((classifier, shots)))
                                                                for shots in (1, 5) for classifier in ("1nn", "mlp"))
                         + " |")
    return lines + [""] if len(lines) > 4 else []


def table(root: str, variant: str) -> list[str]:
    lines = [f"### {variant}", "", "| features | mAP | 5-way 1-shot | 5-way 5-shot | grid average (1-NN) | training |",
             "|---|---|---|---|---|---|"]
    baselines = None
    for name in RUNS:
        report = _report(root, variant, name)
        if report is None:
            continue
        sources = report["sources"]
        lines.append(row(f"{name} ({RUNS[name][2]})", sources["trained embedding"],
                         training_minutes(os.path.join(root, variant, name))))
        baselines = baselines or sources
    for name in BASELINES:
        if baselines and name in baselines:
            lines.append(row(name, baselines[name]))
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(REPO, "runs", "fashion"))
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated methods, of: " + ", ".join(RUNS))
    p.add_argument("--variants", default=",".join(FASHION_VARIANTS), help="comma-separated, of: "
                   + ", ".join(FASHION_VARIANTS))
    p.add_argument("--mlp", action="store_true", help="evaluate with the PCA + MLP classifier too (a few minutes "
                   "a run; a report without it is redone) and add the 1-NN against PCA + MLP table")
    a = p.parse_args()
    names, variants = chosen("--only", a.only, RUNS), chosen("--variants", a.variants, FASHION_VARIANTS)
    if not os.path.isdir(FASHION):
        sys.exit(f"skipped: {FASHION} is absent (the shared fashion photos, ../shared/data)")
    for variant in variants:
        for name in names:
            config, overrides, _ = RUNS[name]
            runs = os.path.join(a.root, variant)  # `{runs}` in an override: this variant's runs (another's workdir)
            args = [f"--config=configs/{config}.py:{variant}", *(o.format(runs=runs) for o in overrides)]
            workdir = os.path.join(runs, name)
            train_and_evaluate(args, workdir, EVALUATE_MLP if a.mlp else EVALUATE)
            if a.mlp and not _has_mlp(_report(a.root, variant, name)):
                launch([*args, f"--workdir={workdir}", *EVALUATE_MLP])
    write_table(a.root, "\n".join(line for v in FASHION_VARIANTS for line in table(a.root, v) + mlp_table(a.root, v)))


if __name__ == "__main__":
    main()
