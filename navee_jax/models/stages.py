"""Freezing backbone stages: their parameters get no updates and their BatchNorm keeps its statistics.

A stage is a dotted path below the backbone (`layer1`, `conv1`, `features.0` for VGG), as in the
torchvision state_dict. The study unfreezes from the top: `model.frozen_stages=("conv1", "bn1",
"layer1", "layer2")` trains layer3, layer4 and the head.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from navee_jax.errors import UserError


def _prefixes(stages: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [("backbone", *s.split(".")) for s in stages]


def stage_names(model: nnx.Module) -> list[str]:
    """The top-level stages of `model.backbone` that hold parameters (what `frozen_stages` may name)."""
    return sorted(str(k) for k in nnx.state(model, nnx.Param)["backbone"].keys())


def frozen_stages(model_cfg: Any, model: nnx.Module) -> tuple[str, ...]:
    """The stages that do not train: `model_cfg.frozen_stages`, or with `train_last_blocks` >= 0 (a ViT) every
    stage below its last n blocks."""
    n = model_cfg.train_last_blocks
    if n < 0:
        return tuple(model_cfg.frozen_stages)
    if not hasattr(model.backbone, "stages_before_last_blocks"):
        raise UserError(f"model.train_last_blocks={n}: {model_cfg.backbone} has no blocks to count; it is for the "
                        f"vit_* backbones (model.frozen_stages names the stages of the others)")
    if model_cfg.frozen_stages:
        raise UserError(f"model.train_last_blocks={n} chooses the frozen stages itself: set model.frozen_stages=()")
    return model.backbone.stages_before_last_blocks(n)


def trainable_filter(stages: tuple[str, ...]) -> Callable[[tuple[Any, ...], Any], bool]:
    """An NNX filter selecting the parameters that train: every nnx.Param outside the frozen stages."""
    prefixes = _prefixes(stages)

    def frozen(path: tuple[Any, ...], _value: Any) -> bool:
        keys = tuple(str(p) for p in path)
        return any(keys[:len(p)] == p for p in prefixes)

    return nnx.All(nnx.Param, nnx.Not(frozen))


def freeze_stages(model: nnx.Module, stages: tuple[str, ...]) -> None:
    """Puts the frozen stages in eval mode, so their BatchNorm normalises with its stored statistics and
    never updates them (and dropout is off); names that match nothing are a one-line error."""
    for stage, prefix in zip(stages, _prefixes(stages)):
        module: Any = model
        try:
            for key in prefix:
                module = module[int(key)] if key.isdigit() else getattr(module, key)
        except (AttributeError, IndexError, TypeError):
            raise UserError(f"model.frozen_stages: {stage!r} is not a stage of the backbone; stages: "
                            f"{stage_names(model)} (a dotted path such as 'layer1.0' also works)") from None
        if isinstance(module, nnx.Module):
            module.eval()
