"""Fingerprints: flat {dotted key: value} views of nested settings, and the first difference between two.

A resumed run compares its config's fingerprint with the checkpoint's; a gallery compares the model and
preprocessing that made it with the ones embedding now. Both refuse with one line naming the first key.
"""

from __future__ import annotations

from typing import Any, Iterable

from flax import traverse_util


def flat(nested: dict[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """{"a.b": value} of a nested dict of JSON values, without the dotted keys in `ignore`."""
    out = traverse_util.flatten_dict(nested, sep=".")
    return {k: v for k, v in out.items() if k not in set(ignore)}


def difference(saved: dict[str, Any], now: dict[str, Any],
               ignore: Iterable[str] = ()) -> tuple[str, Any, Any, int] | None:
    """(first differing dotted key, its saved value, its value now, how many keys differ), or None."""
    a, b = flat(saved, ignore), flat(now, ignore)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return (diff[0], a.get(diff[0]), b.get(diff[0]), len(diff)) if diff else None
