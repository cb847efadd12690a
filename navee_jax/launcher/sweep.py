"""Sweeps: train one config per setting of a grid of overrides, sequentially, each in its own
sub-workdir, then tabulate the best held-out mAP of each setting (the study swept lr, p_same, margin,
p_mining, embedding size and unfrozen layers).

    python launch.py --config=configs/contrastive.py --workdir=runs/sweep \
      --sweep="optim.lr=[5e-5, 1e-4]" --sweep="loss.margin=[1.0, 2.0]"

runs the 4 settings of the grid (one `--sweep` gives a one-key sweep) into runs/sweep/<setting>/ and
writes runs/sweep/sweep.md and sweep.json (and, for one key, sweep.png: the best mAP against the
value, the study's figures 24-29). A sub-run that exists is resumed, so an interrupted sweep
picks up where it stopped.
"""

from __future__ import annotations

import ast
import copy
import itertools
import json
import os
from typing import Any, Callable

import ml_collections

from navee_jax.errors import UserError
from navee_jax.method import method_of


def parse_sweep(specs: list[str], config: ml_collections.ConfigDict) -> list[tuple[str, list[Any]]]:
    """["key=[v1, v2]", ...] -> [(key, [v1, v2]), ...], each value checked against the key's type."""
    from navee_jax.cli import override_problem

    axes = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--sweep={spec!r}: expected key=[value, ...], e.g. --sweep='optim.lr=[5e-5, 1e-4]'")
        problem = override_problem(config, key)
        if problem:
            raise UserError(f"--sweep: {problem}")
        try:
            values = ast.literal_eval(values_text.strip())
        except (ValueError, SyntaxError):
            raise UserError(f"--sweep={spec!r}: the values must be a Python list literal, e.g. "
                            f"{key}=[1, 2] or {key}=['a', 'b']") from None
        if not isinstance(values, list) or not values:
            raise UserError(f"--sweep={spec!r}: the values must be a non-empty list")
        axes.append((key, [_typed(config, key, v) for v in values]))
    return axes


def _typed(config: ml_collections.ConfigDict, key: str, value: Any) -> Any:
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    want = type(node[leaf])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, want):
        raise UserError(f"--sweep: config key {key!r} expects {want.__name__} (default {node[leaf]!r}), "
                        f"got {value!r}")
    return value


def settings(axes: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The grid: every combination of the axes' values, in order."""
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in axes])]


def configure(config: ml_collections.ConfigDict, setting: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with the setting's values."""
    cfg = copy.deepcopy(config)
    for key, value in setting.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def setting_name(setting: dict[str, Any]) -> str:
    """A folder name for a setting, e.g. 'optim.lr=5e-05,loss.margin=1.0'."""
    name = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in setting.items())
    return "".join(c if c.isalnum() or c in "=.,+-_()'" else "_" for c in name)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, axes: list[tuple[str, list[Any]]],
              train: Callable[[ml_collections.ConfigDict, str], dict]) -> list[dict]:
    """Trains every setting with `train(config, sub_workdir)`; writes and prints the table of results, by the
    metric that picks the method's checkpoints (held-out mAP; a classifier's validation accuracy)."""
    key, title = method_of(config).selection(config)
    rows = []
    grid = settings(axes)
    for i, setting in enumerate(grid):
        sub = os.path.join(workdir, setting_name(setting))
        print(f"sweep {i + 1}/{len(grid)}: {setting} -> {sub}")
        result = train(configure(config, setting), sub)
        best = result["best_epoch"]
        rows.append({"setting": setting, "workdir": sub, f"best_{key}": best[key] if best else None,
                     "best_epoch": best["epoch"] if best else None, f"final_{key}": result["final"][key],
                     f"initial_{key}": result["initial"][key]})
    table = sweep_table(rows, key, title)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(table)
    written = "sweep.md and sweep.json"
    if len(axes) == 1:  # a curve per key, as the study drew them; a grid of several keys is its table
        draw_sweep(rows, key, title, os.path.join(workdir, "sweep.png"))
        written = "sweep.md, sweep.json and sweep.png"
    print(f"wrote {written} into {workdir}")
    return rows


def draw_sweep(rows: list[dict], key: str = "map", title: str = "held-out mAP", path: str = "sweep.png") -> str:
    """A one-key sweep's rows (as sweep.json holds them) as a curve: the best `key` of each setting against its
    value, and the network at initialisation beside it."""
    from navee_jax.evaluate.figures import sweep_curve

    (name,) = rows[0]["setting"]
    return sweep_curve(name, [r["setting"][name] for r in rows], [r[f"best_{key}"] for r in rows], path,
                       metric=f"best {title}", initial=[r[f"initial_{key}"] for r in rows])


def sweep_table(rows: list[dict], key: str = "map", title: str = "held-out mAP") -> str:
    """A Markdown table: one row per setting, the best `key` value (named `title`) first, then its epoch, the
    final and the initial one."""
    short = {"map": "mAP"}.get(key, key)
    keys = list(rows[0]["setting"]) if rows else []
    head = "| " + " | ".join(keys + [f"best {title}", "at epoch", f"final {short}", f"initial {short}"]) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 4)]
    for r in rows:
        best = "" if r[f"best_{key}"] is None else f"{r[f'best_{key}']:.4f}"
        cells = [str(r["setting"][k]) for k in keys] + [best, str(r["best_epoch"] or ""),
                                                         f"{r[f'final_{key}']:.4f}", f"{r[f'initial_{key}']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
