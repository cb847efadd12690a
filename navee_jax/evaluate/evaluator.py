"""Evaluators: small objects whose `run(state, final)` yields flat `(key, value)` results (big_vision's form).

Values are numbers, or `navee_jax.evaluate.records.FewShotCell` records under the key "few_shot" (one pair
per cell). `final` asks for the expensive part too (the few-shot episodes): the loop asks for it at
initialisation and after the last epoch, and only for the retrieval numbers after the others.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol

from navee_jax.evaluate.records import FewShotCell


class Evaluator(Protocol):
    def run(self, state: Any, final: bool) -> Iterator[tuple[str, Any]]: ...


def evaluate_all(evaluators: Iterable[Evaluator], state: Any, final: bool) -> dict[str, Any]:
    """{scalar key: value, ..., "few_shot": [cell dicts]} of every evaluator's results, in order; metrics.json's
    `initial` / `final` form."""
    out: dict[str, Any] = {"few_shot": []}
    for evaluator in evaluators:
        for key, value in evaluator.run(state, final):
            if isinstance(value, FewShotCell):
                out["few_shot"].append(value.to_dict())
            elif key in out:
                raise ValueError(f"two evaluators report {key!r}")
            else:
                out[key] = value
    return out
