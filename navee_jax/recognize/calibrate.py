"""The "unknown" threshold: chosen on held-out distances so that a chosen fraction of unknown articles is
accepted (the false-accept rate, FAR).

A query's score is its distance to the best-matching enrolled article (nearest reference image, or nearest
prototype). Negative scores come from queries whose true article is not the match (an unknown article, or
an enrolled article's photo scored against the other articles); positive scores from held-out photos of
enrolled articles scored against their own article. A query is accepted when its score <= threshold.
"""

from __future__ import annotations

import numpy as np

from navee_jax.errors import UserError


def far_threshold(negative: np.ndarray, target_far: float) -> float:
    """The threshold accepting floor(target_far * M) of the M negative scores (the smallest ones): midway
    between the last accepted and the first rejected score, or just below the first rejected one when they
    are equal or none is accepted. So the FAR on these negatives is the largest achievable <= target_far."""
    if not 0.0 <= target_far <= 1.0:
        raise UserError(f"target FAR {target_far}: must be a fraction in [0, 1]")
    neg = np.sort(np.asarray(negative, np.float64))
    if len(neg) == 0:
        raise UserError("calibration needs negative pairs: images of at least two articles, or of articles "
                        "that are not enrolled")
    m = int(np.floor(target_far * len(neg) + 1e-9))
    if m >= len(neg):
        return float("inf")
    first_rejected = neg[m]
    if m > 0 and neg[m - 1] < first_rejected:
        return float((neg[m - 1] + first_rejected) / 2)
    return float(np.nextafter(first_rejected, -np.inf))


def rates(positive: np.ndarray, negative: np.ndarray, threshold: float) -> dict[str, float | int]:
    """False-accept rate on `negative` and true-accept rate (recall) on `positive` scores at `threshold`."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    return {"far": float(np.mean(negative <= threshold)) if len(negative) else float("nan"),
            "recall": float(np.mean(positive <= threshold)) if len(positive) else float("nan"),
            "negatives": int(len(negative)), "positives": int(len(positive))}
