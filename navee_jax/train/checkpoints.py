"""Orbax checkpoints in `workdir/checkpoints`: keep the last few and the best by held-out mAP."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from navee_jax.errors import UserError


class Checkpoints:
    """Saves (train state, JSON metadata) per epoch; restores the latest for resuming."""

    def __init__(self, workdir: str, keep_last: int, best_metric: str = "map"):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        keep = policy.AnyPreservationPolicy([
            policy.LatestN(keep_last),
            policy.BestN(get_metric_fn=lambda m: m[best_metric], n=1),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=keep, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def resolve_step(self, checkpoint: str) -> int | None:
        """The step that `checkpoint` ('best', 'latest' or a saved step number) names; None when there is none."""
        steps = self.manager.all_steps()
        if not steps:
            return None
        if checkpoint in ("best", "latest"):
            return self.best_step() if checkpoint == "best" else self.latest_step()
        if checkpoint.isdigit() and int(checkpoint) in steps:
            return int(checkpoint)
        raise UserError(f"--checkpoint={checkpoint!r}: use best, latest or one of the saved steps {sorted(steps)}")

    def save(self, step: int, state: Any, meta: dict, metrics: dict[str, float]) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics=metrics)

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata: cheap, and checked before the arrays are touched."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types; all mean "not a checkpoint of ours"
            raise UserError(f"checkpoint {self.directory}/{step} is unreadable ({_first_line(e)}); "
                            f"delete it or use a fresh --workdir") from None

    def restore(self, step: int, like: Any) -> Any:
        """The train state, into the structure, shapes and shardings of `like` (a freshly built state)."""
        abstract = jax.tree.map(ocp.tree.to_shape_dtype_struct, like)
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            return self.manager.restore(step, args=args)["state"]
        except Exception as e:  # orbax/tensorstore raise many types; all mean "does not fit this config"
            raise UserError(f"checkpoint {self.directory}/{step} does not match this config ({_first_line(e)}); "
                            f"use the config it was trained with, or a fresh --workdir") from None

    def restore_arrays(self, step: int) -> dict[str, Any]:
        """The saved train state as nested dicts of arrays, without a target structure: for reading the
        model's weights where the optimizer and loss that shaped the rest of the state are not built."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
            raise UserError(f"checkpoint {self.directory}/{step} is unreadable ({_first_line(e)})") from None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
