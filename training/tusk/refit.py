"""Ways to fit the saved prototypes to a bank of training descriptors (``prototypes.refit_bank``).

The SW prototypes collapse while the descriptors keep the names (docs/tusk.md, round 7), so a
checkpoint can name with centres fitted to the latest descriptors instead. Round 8 compares the
clusterings below on the same banks; ``REFIT_METHODS`` lists them by their config name. Each
can start from the previous refit's centres (``init``, ``prototypes.refit_track``, round 9), so that
successive checkpoints follow one partition as training moves the descriptors.
"""

from __future__ import annotations

import numpy as np

from kp_perception_training.evaluation.descriptor_probe import kmeans_centres, nearest_centre


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _member_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """k×C unit means of the members of each label (labels 0..k-1, none empty)."""
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    return _unit(sums)


def kmeans_refit(bank: np.ndarray, m: int, n_init: int = 3, init: np.ndarray | None = None) -> np.ndarray:
    """k-means centres of the unit N×C bank, back on the unit sphere (round 7's refit with ``n_init=3``).

    ``init``: M×C centres to start from (a tracked refit) instead of k-means++.
    """
    return kmeans_centres(bank, m, n_init=n_init, init=init)


def ward_merge(sums: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Labels (0..k-1) merging K clusters (per-cluster sums K×C, sizes K) down to k by Ward's rule.

    Each step merges the pair whose merge adds the least squared error,
    ``n_a n_b / (n_a + n_b) · |c_a − c_b|²`` with ``c`` the cluster means.
    """
    sums, counts = sums.astype(np.float64).copy(), counts.astype(np.float64).copy()
    alive = counts > 0
    group = np.arange(len(counts))
    while alive.sum() > k:
        idx = np.flatnonzero(alive)
        c = sums[idx] / counts[idx, None]
        n = counts[idx]
        cost = (n[:, None] * n[None] / (n[:, None] + n[None])) * ((c[:, None] - c[None]) ** 2).sum(-1)
        np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = idx[i], idx[j]
        sums[a] += sums[b]
        counts[a] += counts[b]
        counts[b] = 0
        alive[b] = False
        group[group == b] = a
    _, labels = np.unique(group, return_inverse=True)
    return labels


def over_ward_refit(bank: np.ndarray, m: int, n_init: int = 3, init: np.ndarray | None = None) -> np.ndarray:
    """2m k-means clusters merged to m by Ward's rule; each centre the unit mean of its members.

    Over-clustering lets k-means split wide groups without merging two tight
    neighbours; the merge then joins what is cheapest to join. It cannot be
    tracked (``init`` must be None): its centres are not k-means starts.
    """
    if init is not None:
        raise ValueError("over_ward refits cannot start from previous centres")
    fine = kmeans_centres(bank, 2 * m, n_init=n_init)
    if len(fine) <= m:
        return fine
    fine_ids = nearest_centre(bank, fine)
    k = len(fine)
    sums = np.zeros((k, bank.shape[1]))
    np.add.at(sums, fine_ids, bank)
    counts = np.bincount(fine_ids, minlength=k)
    merged = ward_merge(sums, counts, min(m, int((counts > 0).sum())))
    return _member_means(bank, merged[fine_ids], int(merged.max()) + 1)


def whitened_refit(
    bank: np.ndarray, m: int, n_init: int = 3, init: np.ndarray | None = None, variance: float = 0.999
) -> np.ndarray:
    """k-means on the PCA-whitened bank (components up to ``variance``); centres as unit member means.

    Whitening gives the weak directions of the descriptors (the ones a few
    strong directions swamp in plain k-means) the same weight as the strong ones.
    ``init``: M×C centres (descriptor space) to start from instead of k-means++.
    """
    mean = bank.mean(0)
    _, s, vt = np.linalg.svd(bank - mean, full_matrices=False)
    var = s**2 / max(len(bank) - 1, 1)
    keep = int(np.searchsorted(np.cumsum(var) / var.sum(), variance) + 1)
    project = vt[:keep].T / np.sqrt(var[:keep])
    z = (bank - mean) @ project
    from sklearn.cluster import KMeans

    start = "k-means++" if init is None else (init - mean) @ project
    runs = n_init if init is None else 1
    labels = KMeans(n_clusters=m, init=start, n_init=runs, random_state=0).fit(z).labels_
    used = np.unique(labels)
    return _member_means(bank, np.searchsorted(used, labels), len(used))


REFIT_METHODS = {
    "kmeans": kmeans_refit,
    "over_ward": over_ward_refit,
    "whitened": whitened_refit,
}
