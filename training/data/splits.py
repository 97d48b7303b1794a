"""Train/val/test splits by sequence, never by frame.

Neighbouring frames of one recording are nearly identical, so splitting
frames would leak test images into training. Whole sequences go to one split.

Policy (deterministic for a given seed and set of names, independent of the
order the names are given in):
- names are sorted, then shuffled with ``seed``;
- split sizes are ``fraction * n`` rounded by largest remainder, so they sum to n;
- every split asked for (fraction > 0) gets at least one sequence when there
  are enough sequences for all of them, taken from the largest split; with
  fewer sequences than such splits, earlier splits (train first) are served first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from kp_perception.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


def split_sequences(
    names: Iterable[str], fractions: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Assign each sequence name to "train", "val" or "test" (the first len(fractions) of them).

    Returns a dict with one key per fraction given; each list keeps the shuffled order.
    """
    names = list(names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"sequence names must be unique to split by sequence; repeated: {', '.join(dup)}")
    fractions = tuple(float(f) for f in fractions)
    if not 1 <= len(fractions) <= len(SPLIT_NAMES) or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigError(f"split fractions must be 1 to 3 non-negative numbers with a positive sum, got {fractions}")
    total = sum(fractions)
    fractions = tuple(f / total for f in fractions)
    n = len(names)
    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)

    exact = [f * n for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    # Every split asked for gets one sequence when possible, taken from the largest.
    for i, f in enumerate(fractions):
        if f > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: sizes[j])
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1

    out: dict[str, list[str]] = {}
    start = 0
    for name, size in zip(SPLIT_NAMES, sizes, strict=False):
        out[name] = order[start : start + size]
        start += size
    return out
