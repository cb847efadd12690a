"""report.json (every number) and report.md (the same, for people) from one results dict.

Schema of `results` (every key optional, so a partial evaluation still renders):

    {
      "meta": {"dataset": "digits", "heldout_classes": "6, 7, 8, 9", ...},  # run facts: str -> scalar
      "sources": {                     # one entry per feature source, rendered in this (insertion) order
        "trained embedding": {         # any name: "HOG + 1-NN", "raw pixels + 1-NN", "ImageNet ResNet-50", ...
          "note": "free text, printed under the heading",
          "retrieval": {"map": 0.73, "map_at_r": 0.52, "recall_at_1": 0.9, "recall_at_5": 0.97,
                        "recall_at_10": 0.99, "queries_scored": 180},  # any subset; other keys listed after
          "standard": [cell, ...],     # the study's settings, e.g. 5-way 1-/5-shot over 600 episodes
          "grid": [cell, ...],         # the N x K grid
        },
      },
    }

A cell is the dict form of `navee_jax.evaluate.records.FewShotCell` (see navee_jax.evaluate.figures):
{"ways", "shots", "classifier"?, "mean", "ci95", "episodes"?, ...} when evaluated, {"ways", "shots",
"skipped": reason, ...} when not possible on this data; a standard cell's classifier, when it has one, is
named beside its setting. NumPy scalars and arrays are accepted and written as plain JSON numbers / lists;
NaN (e.g. mAP with no scorable query) is written as Python's json writes it (NaN), so floats are never
rounded or replaced.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from navee_jax.evaluate.records import grid_average

# Retrieval metrics by key, in table order, with the names the report shows.
RETRIEVAL_METRICS = (("map", "mAP"), ("map_at_r", "MAP@R"), ("recall_at_1", "Recall@1"),
                     ("recall_at_5", "Recall@5"), ("recall_at_10", "Recall@10"), ("queries_scored", "queries scored"))
_METRIC_NAMES = dict(RETRIEVAL_METRICS)
MISSING = "-"  # a number that was not computed (as opposed to "n/a (reason)": a setting that was impossible)


def _plain(x: Any) -> Any:
    """json.dump's fallback for NumPy values."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"report: cannot write {type(x).__name__} to JSON")


def _number(x: Any) -> str:
    if x is None:
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if math.isnan(x) else f"{float(x):.4f}"
    return _escape(str(x))


def _escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _cell(cell: Mapping | None) -> str:
    """'0.8000 ± 0.0100', 'n/a (reason)' for a skipped setting, '-' for one not run."""
    if cell is None:
        return MISSING
    if "skipped" in cell:
        return f"n/a ({_escape(str(cell['skipped']))})"
    ci = cell.get("ci95")
    return _number(cell.get("mean")) + (f" ± {_number(ci)}" if ci is not None else "")


def _setting(cell: Mapping) -> str:
    """'5-way 1-shot', with the classifier when the cell names one ('5-way 1-shot, prototype')."""
    name = f"{int(cell['ways'])}-way {int(cell['shots'])}-shot"
    return f"{name}, {cell['classifier']}" if "classifier" in cell else name


def _by_standard(cells: Sequence[Mapping]) -> dict[tuple[str, int, int], Mapping]:
    """Standard cells by (classifier, N, K): one source may report several classifiers per setting."""
    return {(str(c.get("classifier", "")), int(c["ways"]), int(c["shots"])): c for c in cells}


def _by_setting(cells: Sequence[Mapping]) -> dict[tuple[int, int], Mapping]:
    return {(int(c["ways"]), int(c["shots"])): c for c in cells}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _summary(sources: Mapping[str, Mapping]) -> list[str]:
    """One row per source: the headline retrieval metrics and standard settings that any source has."""
    metrics = [k for k, _ in RETRIEVAL_METRICS if k != "queries_scored"
               and any(k in s.get("retrieval", {}) for s in sources.values())]
    settings = sorted({k for s in sources.values() for k in _by_standard(s.get("standard", []))})
    if not metrics and not settings:
        return []
    header = ["feature source", *(_METRIC_NAMES[k] for k in metrics),
              *(_setting({"ways": n, "shots": k, **({"classifier": c} if c else {})}) for c, n, k in settings)]
    rows = [[_escape(name), *(_number(s.get("retrieval", {}).get(k)) for k in metrics),
             *(_cell(_by_standard(s.get("standard", [])).get(key)) for key in settings)]
            for name, s in sources.items()]
    return ["## Summary", "", *_table(header, rows), ""]


def _retrieval(metrics: Mapping[str, Any]) -> list[str]:
    keys = [k for k, _ in RETRIEVAL_METRICS if k in metrics] + sorted(k for k in metrics if k not in _METRIC_NAMES)
    rows = [[_METRIC_NAMES.get(k, _escape(k)), _number(metrics[k])] for k in keys]
    return ["### Retrieval (support set ranked for each query)", "", *_table(["metric", "value"], rows), ""]


def _standard(cells: Sequence[Mapping]) -> list[str]:
    rows = [[_setting(c), _cell(c), _number(c.get("episodes"))]
            for _, c in sorted(_by_standard(cells).items())]
    return ["### Standard few-shot settings (accuracy ± 95% CI; 1-NN unless a classifier is named)", "",
            *_table(["setting", "accuracy", "episodes"], rows), ""]


def grid_table(cells: Sequence[Mapping]) -> list[str]:
    """The N x K grid as Markdown lines: a row per N (ways), a column per K (shots)."""
    by = _by_setting(cells)
    ways = sorted({n for n, _ in by})
    shots = sorted({k for _, k in by})
    rows = [[str(n), *(_cell(by.get((n, k))) for k in shots)] for n in ways]
    return _table(["N \\ K", *(str(k) for k in shots)], rows)


def _source(name: str, source: Mapping[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if source.get("note"):
        lines += [str(source["note"]), ""]
    if source.get("retrieval"):
        lines += _retrieval(source["retrieval"])
    if source.get("standard"):
        lines += _standard(source["standard"])
    if source.get("grid"):
        lines += ["### N-way K-shot grid (1-NN accuracy ± 95% CI)", "", *grid_table(source["grid"]), ""]
        average = grid_average(source["grid"])
        if average is not None:
            lines += [f"Grid average: {_cell(average)} over {average['cells']} cells.", ""]
    if len(lines) == 2:
        lines += ["No results.", ""]
    return lines


def render_markdown(results: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """report.md's text; `figures` maps a caption to a path relative to the report."""
    lines = ["# Evaluation report", ""]
    meta = results.get("meta", {})
    if meta:
        lines += [f"- {_escape(str(k))}: {_number(meta[k])}" for k in sorted(meta)] + [""]
    sources = results.get("sources", {})
    lines += _summary(sources)
    for name, source in sources.items():
        lines += _source(name, source)
    if figures:
        lines += ["## Figures", ""]
        for caption, rel in figures.items():
            lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(report_dir: str, results: Mapping[str, Any], figures: Mapping[str, str]) -> tuple[str, str]:
    """Writes report_dir/report.json and report_dir/report.md; returns their paths.

    `results` follows the module docstring; `figures` maps a caption to a PNG path (absolute, or relative
    to the working directory), linked from report.md by its path relative to `report_dir` so the folder
    can be moved or zipped. report.json holds `results` plus {"figures": {caption: relative path}}, keys
    sorted. The same arguments always give byte-identical files.
    """
    if "figures" in results:
        raise ValueError("write_report: 'figures' is passed separately, not inside results")
    os.makedirs(report_dir, exist_ok=True)
    rel = {caption: os.path.relpath(os.path.abspath(p), os.path.abspath(report_dir)).replace(os.sep, "/")
           for caption, p in figures.items()}
    json_path, md_path = os.path.join(report_dir, "report.json"), os.path.join(report_dir, "report.md")
    with open(json_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({**results, "figures": rel}, sort_keys=True, indent=2, default=_plain) + "\n")
    with open(md_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(render_markdown(results, rel))
    return json_path, md_path
