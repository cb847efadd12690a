"""Orbax checkpoints in `workdir/checkpoints`: the latest few and the best by held-out mAP.

Each step stores its held-out metrics beside the state (Orbax's `best_fn`), so "best" survives a resume,
and retention is exactly the latest `keep_last` steps plus the best one, whatever process saved them.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from navee_jax.errors import UserError

CHECKPOINT_NAMES = "best, latest or a saved step number"


class UnreadableCheckpoint(UserError):
    """A step whose files cannot be read at all (truncated, deleted, not Orbax's), as opposed to one that
    reads but does not fit the config."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # what Orbax said, for a message of the caller's own


class Checkpoints:
    """Saves (train state, JSON metadata, metrics) per epoch. `keep_last=None` opens the directory read-only:
    evaluation and recognition never write or delete a checkpoint."""

    def __init__(self, workdir: str, keep_last: int | None = None, best_metric: str = "map"):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.best_metric = best_metric

        def rank(metrics: dict) -> tuple:  # ties go to the earlier step, as metrics.json's best_epoch
            return metrics[best_metric], -metrics.get("step", 0)

        best = dict(best_fn=rank, best_mode="max")
        self.read_only = keep_last is None
        if self.read_only:  # Orbax's read-only manager: it never saves or deletes
            options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False, **best)
        else:
            keep = policy.AnyPreservationPolicy([
                policy.LatestN(keep_last),
                # Steps saved before metrics were recorded with them are kept: one of them may be a workdir's best.
                policy.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=True),
            ])
            options = ocp.CheckpointManagerOptions(preservation_policy=keep, cleanup_tmp_directories=True, **best)
        quiet = _WithoutReadOnlyNotice()
        logging.getLogger("absl").addFilter(quiet)  # it says "directory is read only", which we asked for
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            logging.getLogger("absl").removeFilter(quiet)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def resolve_step(self, checkpoint: str) -> int | None:
        """The step that `checkpoint` ('best', 'latest' or a saved step number) names; None when there is none."""
        steps = self.steps()
        if not steps:
            return None
        if checkpoint == "latest":
            return self.latest_step()
        if checkpoint == "best":
            best = self.manager.best_step()  # the highest recorded metric; None when no step recorded one
            if best is None:
                raise UserError(f"{self.directory}: no checkpoint recorded its held-out {self.best_metric} (saved "
                                f"by an older version); pass --checkpoint=latest or one of the steps {steps}")
            return best
        if checkpoint.isdigit() and int(checkpoint) in steps:
            return int(checkpoint)
        raise UserError(f"--checkpoint={checkpoint!r}: use {CHECKPOINT_NAMES}; saved steps: {steps}")

    def save(self, step: int, state: Any, meta: dict, metrics: dict[str, float]) -> None:
        """Returns once the step is on disk, so that whatever is printed after it is true even if the
        process is killed the next instant."""
        assert not self.read_only, "opened read-only (keep_last=None)"
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics={**metrics, "step": step})
        self.manager.wait_until_finished()

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata: cheap, and checked before the arrays are touched."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types; all mean "not a checkpoint of ours"
            raise self._unreadable(step, e) from None

    def restore(self, step: int, like: Any) -> Any:
        """The train state, into the structure, shapes and shardings of `like` (a freshly built state)."""
        abstract = jax.tree.map(ocp.tree.to_shape_dtype_struct, like)
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            return self.manager.restore(step, args=args)["state"]
        except Exception as e:  # orbax/tensorstore raise many types: tell corrupt files from a mismatch
            mismatch = e
        self.restore_arrays(step)  # raises UnreadableCheckpoint when the files themselves are broken
        raise UserError(f"checkpoint {self.directory}/{step} does not match this config ({_first_line(mismatch)}); "
                        f"use the config it was trained with, or a fresh --workdir") from None

    def restore_arrays(self, step: int) -> dict[str, Any]:
        """The saved train state as nested dicts of arrays, without a target structure: for reading the
        model's weights where the optimizer and loss that shaped the rest of the state are not built."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
            raise self._unreadable(step, e) from None

    def set_aside(self, step: int) -> str:
        """Moves an unreadable step out of Orbax's directory (so that training can save that step again),
        into `workdir/unreadable_checkpoints/`, where the user can inspect or delete it."""
        target_dir = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints")
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, str(step))
        suffix = 1
        while os.path.exists(target):
            target, suffix = os.path.join(target_dir, f"{step}.{suffix}"), suffix + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def _unreadable(self, step: int, e: Exception) -> UnreadableCheckpoint:
        others = [s for s in self.steps() if s != step]
        return UnreadableCheckpoint(
            f"checkpoint {self.directory}/{step} is unreadable ({_first_line(e)}); delete that folder" +
            (f", or use another saved step {others}" if others else ", or use a fresh --workdir"), _first_line(e))


def restore_arrays(workdir: str, checkpoint: str, best_metric: str = "map") -> tuple[int, dict[str, Any]]:
    """(step, saved train state as nested dicts of arrays) of `checkpoint` (best, latest or a step) in `workdir`,
    read-only; "best" by the recorded `best_metric`."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"workdir {workdir!r} has no checkpoints/ (train it first)")
    ckpt = Checkpoints(workdir, best_metric=best_metric)  # read-only: loading never deletes a checkpoint
    try:
        step = ckpt.resolve_step(checkpoint)
        if step is None:
            raise UserError(f"workdir {workdir!r} has no saved checkpoint")
        return step, ckpt.restore_arrays(step)
    finally:
        ckpt.close()


def unwrap_arrays(tree: Any) -> Any:
    """Orbax's target-free restore keeps NNX's {'value': array} leaves; these are the arrays."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: unwrap_arrays(v) for k, v in tree.items()}
    return tree


def split_workdir(path: str) -> tuple[str, str]:
    """(workdir, checkpoint) from a workdir (its best checkpoint) or a `<workdir>/checkpoints/<step>` folder."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.basename(path).isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), os.path.basename(path)
    return path, "best"


def start_from_workdir(model: nnx.Module, spec: str) -> str:
    """Fills every variable of `model` (backbone and head) from a trained workdir's best checkpoint, or from a
    `<workdir>/checkpoints/<step>` folder (as the Recognizer reads them); returns the checkpoint's folder."""
    workdir, checkpoint = split_workdir(spec)
    step, restored = restore_arrays(workdir, checkpoint)
    where = f"{workdir}/checkpoints/{step}"
    load_weights_into(model, restored, where, f"model.init_workdir={spec!r}: its checkpoint does not fit this "
                                              f"run's model")
    return where


def load_weights_into(model: nnx.Module, restored: dict[str, Any], where: str, misfit: str = "") -> None:
    """Copies every variable of `model` from the restored checkpoint arrays (params + model_state); `misfit`
    begins the message when they do not fit (default: the checkpoint does not fit its config.json)."""
    saved = {}
    for part in ("params", "model_state"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(unwrap_arrays(restored.get(part, {})))[0]:
            saved[tuple(str(getattr(p, "key", p)) for p in path)] = leaf
    state = nnx.state(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))
    leaves = []
    for path, like in flat:
        key = tuple(str(getattr(p, "key", p)) for p in path)
        if key not in saved or np.shape(saved[key]) != np.shape(like):
            got = np.shape(saved[key]) if key in saved else "missing"
            raise UserError(f"{misfit or f'checkpoint {where} does not fit its config.json'}: {'/'.join(key)} is "
                            f"{got}, the model needs {np.shape(like)}")
        leaves.append(np.asarray(saved[key], like.dtype))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, leaves))
    nnx.update(model, state)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class _WithoutReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "read only" not in record.getMessage()
