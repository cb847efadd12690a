"""train_and_evaluate: the single training loop every method runs through."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from navee_jax.checkpoints import Checkpoints, UnreadableCheckpoint
from navee_jax.cli import interrupts_deferred, raise_if_interrupted
from navee_jax.data.catalogue import Catalogue
from navee_jax.data.rotations import with_rotated_classes
from navee_jax.data.sources import load_catalogue
from navee_jax.data.splits import Split, make_split, split_seed, write_split
from navee_jax.errors import UserError
from navee_jax.evaluate.evaluator import evaluate_all
from navee_jax.evaluate.records import FewShotCell
from navee_jax.fingerprint import difference, flat
from navee_jax.launcher.progress import Progress
from navee_jax.method import Trainer, method_of
from navee_jax.recorded_config import KEYS_ADDED_LATER
from navee_jax.sharding import check_divisible, make_mesh, shard_step_batch

# Below this embedding spread (see train.step.embedding_spread) the run is reported as collapsed.
COLLAPSE_SPREAD = 1e-2

# How the final lines name the classifiers of the held-out few-shot cells.
CLASSIFIER_NAMES = {"1nn": "1-NN", "knn": "k-NN"}

# Config sections (and keys) a checkpoint depends on: resuming with any of them changed is refused.
_RESUME_MUST_MATCH = ("seed", "method", "data", "split", "model", "loss", "sampler")
_RESUME_MUST_MATCH_KEYS = ("train.steps_per_epoch",)  # epoch <-> step bookkeeping


def _resume_fingerprint(config: ml_collections.ConfigDict) -> dict:
    full = flat(json.loads(config.to_json()))
    return {k: v for k, v in full.items() if k.split(".")[0] in _RESUME_MUST_MATCH or k in _RESUME_MUST_MATCH_KEYS}


def _check_resumable(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
    # A checkpoint from before a key compares that key's old value, not a key it never had.
    found = difference({**KEYS_ADDED_LATER, **flat(saved)}, _resume_fingerprint(config))
    if found:
        k, was, now, count = found
        raise UserError(f"{where} was trained with {k}={was!r} but the config now says {now!r} "
                        f"({count} differing key(s)); use the same config or a fresh --workdir")


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def prepare_data(config: ml_collections.ConfigDict) -> tuple[Catalogue, Split]:
    """Catalogue (skipped files printed one per line) and split."""
    catalogue = load_catalogue(config.data)
    for line in catalogue.skip_report():
        print(line)
    split = make_split(catalogue, config.split, split_seed(config))
    rotations = tuple(config.data.rotated_classes)
    catalogue, split = with_rotated_classes(catalogue, split, rotations)
    n_train_classes = len(np.unique(catalogue.labels[split.train]))
    if config.split.mode == "stratified":
        untested = split.untested_classes
        print(f"data: {catalogue.name}: {len(catalogue)} images, {n_train_classes} classes, each divided by the "
              f"seed: train {len(split.train)} / validation {len(split.validation)} / test {len(split.test)} images" +
              (f"; {len(untested)} classes of a single image train only, untested: {list(untested[:12])}"
               f"{' ... (all in splits.json)' if len(untested) > 12 else ''}" if untested else ""))
        return catalogue, split
    heldout = split.heldout_classes
    named = (heldout if len(heldout) <= 12
             else f"{len(heldout)} classes ({', '.join(heldout[:3])}, ...: all in splits.json)")
    print(f"data: {catalogue.name}: {len(catalogue)} images, {len(catalogue.class_names)} classes; "
          f"train {len(split.train)} images / {n_train_classes} classes; held out {named}: "
          f"{len(split.support)} support / {len(split.query)} query" +
          (f" / {len(split.unused)} unused (classes too small)" if len(split.unused) else "") +
          (f"; {len(split.untrained)} images of other groups than split.train_groups do not train"
           if len(split.untrained) else ""))
    if rotations:
        print(f"data: the training classes include each one rotated by {rotations} degrees (held-out classes "
              f"are never rotated)")
    if catalogue.content_ids is not None:
        print(f"data: {split.duplicates_summary(catalogue)}")
    return catalogue, split


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run builds from its config before training: what evaluation needs too, so that a
    checkpoint restores into exactly the structure it was saved from."""

    catalogue: Catalogue
    split: Split
    mesh: jax.sharding.Mesh
    steps_per_epoch: int
    trainer: Trainer


def build_setup(config: ml_collections.ConfigDict) -> Setup:
    method = method_of(config)
    kinds = method.sampler_kinds(config)  # config_check says so first; in-process callers may not have run it
    if config.sampler.kind not in kinds:
        raise UserError(f"sampler.kind={config.sampler.kind!r}: {method.name} with loss.name={config.loss.name!r} "
                        f"trains on {list(kinds)}")
    method.check_config(config)  # before the data loads: a bad setting is one line, at once
    catalogue, split = prepare_data(config)
    mesh = make_mesh()
    check_divisible(config.eval.batch_size, mesh, "eval.batch_size")
    steps_per_epoch = config.train.steps_per_epoch or math.ceil(len(split.train) / method.images_per_step(config))
    return Setup(catalogue, split, mesh, steps_per_epoch, method.build(config, catalogue, split, mesh, steps_per_epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, checkpoints each epoch, evaluates on held-out classes; returns what metrics.json holds."""
    setup = build_setup(config)
    trainer, mesh, split, steps_per_epoch = setup.trainer, setup.mesh, setup.split, setup.steps_per_epoch
    key, title = method_of(config).selection(config)  # e.g. ("map", "held-out mAP"): what picks the best checkpoint
    catalogue, state = setup.catalogue, trainer.state
    num_epochs = config.train.num_epochs
    total_steps = num_epochs * steps_per_epoch

    def evaluate(state, final: bool) -> dict:
        return evaluate_all(trainer.evaluators, state, final)

    def refit(state):  # what the evaluation and the checkpoint after it see
        return state if trainer.refit is None else trainer.refit(state)

    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpoints(workdir, config.train.keep_checkpoints, best_metric=key)
    writer = None
    try:
        latest, meta, state = _restore_newest_readable(ckpt, state, config, workdir)
        # Only once the workdir is known to belong to this config are its files (re)written.
        _write_run_files(workdir, config, catalogue, split, resuming=meta is not None)
        writer = _metric_writer(workdir)
        if meta is not None:
            start_epoch, history, initial = meta["epoch"], meta["history"], meta["initial"]
            print(f"resuming from checkpoint step {latest} (epoch {start_epoch}/{num_epochs}) in {ckpt.directory}")
        else:
            start_epoch, history = 0, []
            state = refit(state)
            initial = evaluate(state, final=True)
            print(f"epoch 0/{num_epochs} {title} {initial[key]:.4f} (at initialisation)")

        report = IntervalReport(Progress(total_steps, start_epoch * steps_per_epoch), writer, config,
                                trainer.schedule)
        train_start, result = time.perf_counter(), None
        for epoch in range(start_epoch, num_epochs):
            pending, loss_sum = [], 0.0
            for i, batch in enumerate(trainer.batches(epoch, steps_per_epoch)):
                raise_if_interrupted()  # a signal whose exception was swallowed (e.g. in a __del__) stops here
                state, metrics = trainer.train_step(state, shard_step_batch(batch, mesh, trainer.replicated_keys))
                pending.append(metrics)
                step = epoch * steps_per_epoch + i + 1
                if step % config.train.log_every == 0 or i + 1 == steps_per_epoch:
                    loss_sum += report(pending, step, epoch + 1, num_epochs) * len(pending)
                    pending = []
            state = refit(state)
            result = evaluate(state, final=epoch + 1 == num_epochs)  # the last epoch's is the final one
            epoch_value = result[key]
            history.append({"epoch": epoch + 1, "step": step, key: epoch_value, "loss": loss_sum / steps_per_epoch})
            meta = {"epoch": epoch + 1, "history": history, "initial": initial,
                    "fingerprint": _resume_fingerprint(config)}
            with interrupts_deferred():  # Ctrl-C waits for the checkpoint: it is then on disk, whole
                ckpt.save(step, state, meta, {key: epoch_value})
            writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
            best = max(history, key=lambda h: h[key])
            print(f"epoch {epoch + 1}/{num_epochs} {title} {epoch_value:.4f} "
                  f"(best {best[key]:.4f} at epoch {best['epoch']}); checkpoint saved at step {step}")
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()

    final = result or evaluate(state, final=True)  # a run resumed after its last epoch has no result yet
    results = {"final": final, "initial": initial, "history": history, "steps": total_steps,
               "best_epoch": max(history, key=lambda h: h[key]) if history else None}
    _write_json(os.path.join(workdir, "metrics.json"), results)
    scored = f" over {final['queries_scored']} queries" if "queries_scored" in final else ""
    print(f"final {title} {final[key]:.4f} (at initialisation {initial[key]:.4f}){scored}")
    for name, value in final.items():  # e.g. a classifier's test accuracy at each label level
        if name.startswith(("test_", "train_")):
            before = initial.get(name, math.nan)
            print(f"final {name.replace('_', ' ', 1)} {value:.4f} (at initialisation {before:.4f})")
    print_few_shot_lines(final["few_shot"], initial["few_shot"])
    print(f"trained {total_steps - start_epoch * steps_per_epoch} steps in {time.perf_counter() - train_start:.1f}s; "
          f"wrote {os.path.join(workdir, 'metrics.json')}")
    return results


def print_few_shot_lines(final: list[dict], initial: list[dict]) -> None:
    """One line per final few-shot cell, beside the same cell at initialisation."""
    before = {(c["ways"], c["shots"], c["classifier"]): FewShotCell.from_dict(c) for c in initial}
    for cell in map(FewShotCell.from_dict, final):
        was = before.get((cell.ways, cell.shots, cell.classifier))
        how = CLASSIFIER_NAMES.get(cell.classifier, cell.classifier)
        if cell.skipped:
            print(f"{cell.name} {how} accuracy skipped: {cell.skipped}")
            continue
        then = (f"{was.mean:.4f} at initialisation" if was is not None and not was.skipped
                else "not run at initialisation")
        print(f"{cell.name} {how} accuracy {cell.mean:.4f} +- {cell.ci95:.4f} ({cell.episodes} episodes; {then})")


def _restore_newest_readable(ckpt: Checkpoints, state: Any, config: ml_collections.ConfigDict,
                             workdir: str) -> tuple[int | None, dict | None, Any]:
    """(step, metadata, state) of the newest checkpoint whose files read, or (None, None, `state`) when there
    is none. Unreadable steps are moved aside (kept for the user) and said so; a readable checkpoint of
    another config is refused."""
    for step in reversed(ckpt.steps()):
        try:
            meta = ckpt.restore_meta(step)
            _check_resumable(meta["fingerprint"], config, f"workdir {workdir}")
            return step, meta, ckpt.restore(step, state)
        except UnreadableCheckpoint as e:
            moved = ckpt.set_aside(step)
            older = [s for s in ckpt.steps() if s < step]
            print(f"warning: checkpoint step {step} is unreadable ({e.reason}); moved it to {moved} for you to "
                  f"inspect or delete; " + (f"falling back to step {older[-1]}" if older else "no older checkpoint"))
    return None, None, state


def _write_run_files(workdir: str, config: ml_collections.ConfigDict, catalogue: Catalogue, split: Split,
                     resuming: bool) -> None:
    """config.json, skipped_files.json and splits.json (which a resumed run must match)."""
    write_split(split, catalogue, os.path.join(workdir, "splits.json"), must_match_existing=resuming)
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    _write_json(os.path.join(workdir, "skipped_files.json"),
                [{"path": s.path, "reason": s.reason} for s in catalogue.skipped])


class IntervalReport:
    """Every log interval: check the metrics are finite, print the progress line, write TensorBoard."""

    def __init__(self, progress: Progress, writer, config: ml_collections.ConfigDict, schedule):
        self.progress, self.writer, self.config, self.schedule = progress, writer, config, schedule
        self.warned_collapse = False

    def __call__(self, pending: list[dict], step: int, epoch: int, num_epochs: int) -> float:
        """Returns the interval's mean loss."""
        logged = {**average_finite_metrics(pending, step, self.config), "lr": float(self.schedule(step - 1))}
        print(self.progress.line(step, epoch, num_epochs, logged))
        # A step whose network outputs class logits, not embeddings (a meta-step), reports no spread.
        if logged.get("spread", math.inf) < COLLAPSE_SPREAD and not self.warned_collapse:
            self.warned_collapse = True
            print(f"warning: the embedding has collapsed at step {step} (all training images map to nearly one "
                  f"point: spread {logged['spread']:.2g}); retrieval numbers from it are not trustworthy: "
                  f"lower --config.optim.lr or change the loss/margin")
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in logged.items()})
        return logged["loss"]


def average_finite_metrics(pending: list[dict], step: int, config: ml_collections.ConfigDict) -> dict[str, float]:
    host = jax.device_get(pending)
    logged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    bad = [k for k in ("loss", "grad_norm") if not all(math.isfinite(float(m[k])) for m in host)]
    if bad:
        raise UserError(f"{' and '.join(bad)} not finite (NaN/inf) by step {step}: training diverged; lower "
                        f"--config.optim.lr (now {config.optim.lr}) or check the inputs and data.mean/std")
    return logged


def _metric_writer(workdir: str):
    from clu import metric_writers

    if jax.process_index() == 0:
        return metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
    return metric_writers.MultiWriter([])
