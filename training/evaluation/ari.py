"""Adjusted Rand index, and its foreground variant used for object discovery (pure numpy).

Foreground ARI (Greff et al., used by Slot Attention and TUSK): compare the
predicted segment of every pixel whose ground-truth label is not background,
so a model is neither rewarded nor punished for how it splits the background.
"""

from __future__ import annotations

import numpy as np


def _comb2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x * (x - 1.0) / 2.0


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """ARI between two flat labelings of the same items (any integer labels); 1.0 for identical partitions.

    Matches ``sklearn.metrics.adjusted_rand_score``, including its convention that
    two trivial partitions (one cluster each, or every item alone) give 1.0.
    """
    a = np.asarray(labels_true).reshape(-1)
    b = np.asarray(labels_pred).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in size: {a.shape} vs {b.shape}")
    n = a.size
    if n == 0:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    sum_cells = _comb2(table).sum()
    sum_rows = _comb2(table.sum(1)).sum()
    sum_cols = _comb2(table.sum(0)).sum()
    total = _comb2(np.array(n)).item()
    expected = sum_rows * sum_cols / total if total > 0 else 0.0
    maximum = (sum_rows + sum_cols) / 2.0
    if maximum == expected:  # both partitions trivial in the same way
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def foreground_ari(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """ARI over pixels whose ground-truth instance id is non-zero (H×W int masks, 0 = background).

    An image without foreground pixels gives NaN (callers average with nanmean).
    """
    true_mask = np.asarray(true_mask)
    pred_mask = np.asarray(pred_mask)
    if true_mask.shape != pred_mask.shape:
        raise ValueError(f"mask shapes differ: {true_mask.shape} vs {pred_mask.shape}")
    fg = true_mask != 0
    if not fg.any():
        return float("nan")
    return adjusted_rand_index(true_mask[fg], pred_mask[fg])
