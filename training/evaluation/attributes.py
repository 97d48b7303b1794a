"""Attribute (shape, colour) accuracy of prototype assignments, and matching objects to keypoints.

Protocol (TUSK): each prototype is assigned the attribute value it best
represents, i.e. the most frequent value among the objects its keypoints were
matched to; an object counts as correct when its keypoint's prototype is
assigned the object's own value. Objects no keypoint was matched to count as
wrong. The assignment is fitted on the evaluated set itself, as the
reference does (it is a labelling of clusters, not a trained classifier).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment


def match_points(pred_xy: np.ndarray, true_xy: np.ndarray, max_distance: float = np.inf) -> list[tuple[int, int]]:
    """Hungarian matching of K predicted to G true points (pixels) by distance; pairs (pred, true) within range."""
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    true_xy = np.asarray(true_xy, dtype=np.float64).reshape(-1, 2)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return []
    cost = np.linalg.norm(pred_xy[:, None] - true_xy[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] <= max_distance]


def attribute_accuracy(prototype_ids: list[int | None], values: list) -> float:
    """Accuracy of majority-vote prototype labels: ids[i] is object i's prototype (None = unmatched)."""
    if len(prototype_ids) != len(values):
        raise ValueError(f"{len(prototype_ids)} prototype ids but {len(values)} attribute values")
    if not values:
        return float("nan")
    votes: dict[int, Counter] = {}
    for p, v in zip(prototype_ids, values, strict=True):
        if p is not None:
            votes.setdefault(int(p), Counter())[v] += 1
    label = {p: c.most_common(1)[0][0] for p, c in votes.items()}
    correct = sum(1 for p, v in zip(prototype_ids, values, strict=True) if p is not None and label[int(p)] == v)
    return correct / len(values)
