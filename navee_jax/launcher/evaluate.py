"""`launch.py --mode=evaluate`: a trained checkpoint and the baselines, evaluated by the same code on the
held-out classes of the config's data and split, into `workdir/report/` (report.json, report.md, figures).

Feature sources: the trained embedding (`--checkpoint=best|latest|<step>`, the best by recorded held-out
mAP by default; `--checkpoint=none` leaves it out, and a workdir without that checkpoint is an error), the
network at initialisation (untrained, or `model.pretrained` weights), and the `eval.baselines` on pixels
('raw pixels', 'HOG'). Each gets retrieval metrics (mAP, MAP@R, Recall@K), the N x K grid with 1-NN and the
standard 5-way 1-/5-shot protocol with every `eval.classifiers`. The features are the method's
(`Trainer.embed_fn`), and a method with a classifier of its own adds its standard-protocol cells
(`Trainer.protocol_cells`, e.g. fine-tuning on each episode).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import ml_collections
import numpy as np

from navee_jax.data.pipeline import eval_batches
from navee_jax.errors import UserError
from navee_jax.evaluate import figures
from navee_jax.evaluate.baselines import BASELINES, features_for
from navee_jax.evaluate.fewshot import few_shot_grid, standard_protocol
from navee_jax.evaluate.records import grid_average
from navee_jax.evaluate.report import write_report
from navee_jax.evaluate.retrieval import retrieval_metrics
from navee_jax.losses.registry import Distance
from navee_jax.checkpoints import Checkpoints
from navee_jax.evaluate.heldout import HeldoutEvaluator
from navee_jax.launcher.train import Setup, build_setup, prepare_data
from navee_jax.method import method_of

NO_CHECKPOINT = "none"  # --checkpoint=none: no trained network, only the initial one and the baselines


def check_evaluable(config: ml_collections.ConfigDict, workdir: str, checkpoint: str) -> int | None:
    """Before anything is built or written: the workdir exists and holds the checkpoint asked for; returns its
    step (None for `checkpoint='none'`: only the network at initialisation and the baselines)."""
    if checkpoint == NO_CHECKPOINT:
        return None
    if not os.path.isdir(workdir):
        what = "is a file, not a training workdir" if os.path.exists(workdir) else "does not exist"
        raise UserError(f"--mode=evaluate: --workdir={workdir!r} {what}; train into it first (the same command "
                        f"without --mode=evaluate), or pass --checkpoint={NO_CHECKPOINT} to evaluate only the "
                        f"network at initialisation and the baselines")
    ckpt = Checkpoints(workdir, best_metric=method_of(config).selection(config)[0])
    try:
        step = ckpt.resolve_step(checkpoint)
    finally:
        ckpt.close()
    if step is None:
        raise UserError(f"--mode=evaluate: workdir {workdir!r} has no saved checkpoint; train it first, or pass "
                        f"--checkpoint={NO_CHECKPOINT} to evaluate only the network at initialisation and the "
                        f"baselines")
    return step


def _restore(setup: Setup, config: ml_collections.ConfigDict, workdir: str,
             checkpoint: str) -> tuple[Any, str] | None:
    """(train state, description) of `checkpoint` in `workdir`, or None for `checkpoint='none'`."""
    step = check_evaluable(config, workdir, checkpoint)
    if step is None:
        return None
    ckpt = Checkpoints(workdir)  # read-only: evaluation never deletes a checkpoint
    try:
        meta = ckpt.restore_meta(step)
        state = ckpt.restore(step, setup.trainer.state)
    finally:
        ckpt.close()
    return state, f"{checkpoint} checkpoint: step {step}, epoch {meta['epoch']}"


def _evaluate_source(support: np.ndarray, query: np.ndarray, support_labels: np.ndarray, query_labels: np.ndarray,
                     config: ml_collections.ConfigDict, distance: Distance | None = None) -> dict[str, Any]:
    """`distance`: the method's own ranking for a network source (Trainer.distance_of), None otherwise."""
    e = config.eval
    standard = [cell.to_dict() for classifier in e.classifiers
                for cell in standard_protocol(support, support_labels, query, query_labels, classifier=classifier,
                                              queries=e.queries_per_class, episodes=e.standard_episodes,
                                              seed=config.seed, distance=distance)]
    grid = few_shot_grid(support, support_labels, query, query_labels, ways=tuple(e.grid_ways),
                         shots=tuple(e.grid_shots), queries=e.queries_per_class, episodes=e.episodes,
                         seed=config.seed, distance=distance)
    return {"retrieval": retrieval_metrics(query, query_labels, support, support_labels, metric=e.metric,
                                           distance=distance),
            "standard": standard, "grid": [cell.to_dict() for cell in grid]}


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best") -> dict:
    """Evaluates every feature source, writes workdir/report/{report.json, report.md, *.png}; returns results."""
    unknown = [b for b in config.eval.baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"eval.baselines: {unknown} unknown; available: {sorted(BASELINES)}")
    own_report = method_of(config).own_report(config)  # e.g. a classifier's accuracy on its own classes
    if own_report is not None:
        if checkpoint == NO_CHECKPOINT:
            raise UserError(f"--checkpoint=none: method={config.method!r} reports on its trained checkpoint only")
        catalogue, split = prepare_data(config)
        return own_report(config, catalogue, split, workdir, checkpoint)
    setup = build_setup(config)
    catalogue, split, trainer = setup.catalogue, setup.split, setup.trainer
    support_labels, query_labels = catalogue.labels[split.support], catalogue.labels[split.query]
    features = HeldoutEvaluator(catalogue, split, config, trainer.embed_fn, setup.mesh)  # embeds; ranks below

    networks = {}
    restored = _restore(setup, config, workdir, checkpoint)
    if restored is not None:
        networks["trained embedding"] = (restored[0], restored[1])
    initial = "pretrained network" if config.model.pretrained else "untrained network"
    untrained = trainer.state if trainer.refit is None else trainer.refit(trainer.state)  # as training scored it
    networks[initial] = (untrained, f"{config.model.backbone} at initialisation")

    report_dir = os.path.join(workdir, "report")
    os.makedirs(report_dir, exist_ok=True)
    trained = restored[1] if restored is not None else "none: the network at initialisation and the baselines"
    results: dict[str, Any] = {"meta": {"dataset": catalogue.name, "checkpoint": trained,
                                        "heldout_classes": len(split.heldout_classes),
                                        "support_images": len(split.support), "query_images": len(split.query)},
                               "sources": {}}
    figs: dict[str, str] = {}
    embedded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (state, note) in networks.items():
        emb = features.embed(state)
        embedded[name] = emb[:len(split.support)], emb[len(split.support):]
        results["sources"][name] = {"note": note}
    for name in config.eval.baselines:
        extract = BASELINES[name]
        embedded[name] = tuple(features_for(idx, catalogue, config.data, extract, config.eval.batch_size)
                               for idx in (split.support, split.query))
        results["sources"][name] = {"note": f"{name} features of the same images, no training"}

    for name, (support, query) in embedded.items():
        print(f"evaluate: {name}")
        distance = (trainer.distance_of(networks[name][0])
                    if name in networks and trainer.distance_of is not None else None)
        results["sources"][name].update(_evaluate_source(support, query, support_labels, query_labels, config,
                                                         distance))
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        figs[f"{name}: N-way K-shot 1-NN accuracy"] = figures.accuracy_heatmap(
            results["sources"][name]["grid"], os.path.join(report_dir, f"grid_{slug}.png"), title=name)

    if trainer.protocol_cells is not None:  # the method's own classifier, e.g. fine-tuning on each episode
        for name, (state, _) in networks.items():
            print(f"evaluate: {name}, the method's own classifier")
            cells = trainer.protocol_cells(state, config.eval.standard_episodes, config.seed)
            results["sources"][name]["standard"] += [cell.to_dict() for cell in cells]

    main = next(iter(embedded))  # the trained embedding when there is one, else the initial network
    support, query = embedded[main]
    pos, neg = figures.pair_distances(np.concatenate([support, query]),
                                      np.concatenate([support_labels, query_labels]), seed=config.seed)
    figs[f"{main}: positive vs negative pair distances"] = figures.distance_histograms(
        pos, neg, os.path.join(report_dir, "distances.png"), title=main)
    names = np.array(catalogue.class_names)
    figs[f"{main}: 2-D PCA of held-out classes"] = figures.pca_scatter(
        query, query_labels, os.path.join(report_dir, "pca.png"), seed=config.seed,
        class_names={int(c): names[c] for c in np.unique(query_labels)}, title=main)
    figs[f"{main}: nearest support images of a few queries"] = _neighbour_figure(
        catalogue, split, config, support, query, os.path.join(report_dir, "neighbours.png"))
    history = _history(workdir)
    if history:
        figs["training: loss and held-out mAP per epoch"] = figures.training_curves(
            history, os.path.join(report_dir, "training.png"))

    json_path, md_path = write_report(report_dir, results, figs)
    for name, r in results["sources"].items():
        shot = "".join(f"; {c['ways']}-way 1-shot {c['classifier']} {c['mean']:.4f} +- {c['ci95']:.4f}"
                       for c in r["standard"] if c["shots"] == 1 and "skipped" not in c)
        average = grid_average(r["grid"])
        grid = "" if average is None else f"; grid average {average['mean']:.4f} +- {average['ci95']:.4f}"
        print(f"{name}: mAP {r['retrieval']['map']:.4f}{shot}{grid}")
    print(f"wrote {md_path} and {json_path}")
    return results


def _history(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f).get("history", [])


def _neighbour_figure(catalogue, split, config, support: np.ndarray, query: np.ndarray, path: str) -> str:
    ex = figures.nearest_neighbour_examples(query, catalogue.labels[split.query], support,
                                            catalogue.labels[split.support], seed=config.seed)
    def images(idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1)
        return np.concatenate(list(eval_batches(catalogue, flat, config.data, 256))).reshape(
            idx.shape + (config.data.image_size, config.data.image_size, 3))

    return figures.nearest_neighbours(images(split.query[ex["query"]]), images(split.support[ex["neighbours"]]),
                                      ex["distances"], ex["correct"], path)

