"""Foreground adjusted Rand index for object discovery (ARI itself is scikit-learn's).

Foreground ARI (Greff et al., used by Slot Attention and TUSK): compare the
predicted segment of every pixel whose ground-truth label is not background,
so a model is neither rewarded nor punished for how it splits the background.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score


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
    return float(adjusted_rand_score(true_mask[fg], pred_mask[fg]))
