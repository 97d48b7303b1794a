"""Landmark regression: exact fits, visibility, and the cross-validated ridge on sparse slot features."""

import numpy as np
import pytest

from kp_perception.errors import DataError
from kp_perception_training.evaluation.landmarks import landmark_rmse

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def _halves(n, seed=0):
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def test_linear_landmarks_are_recovered_exactly():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 64, size=(60, 6))
    a = rng.normal(size=(6, 2))
    targets = (x @ a + np.array([5.0, -3.0]))[:, None, :]
    fit, test = _halves(60)
    visible = np.ones((60, 1), bool)
    assert landmark_rmse(x, targets, visible, fit, test) < 1e-6
    assert landmark_rmse(x, targets, visible, fit, test, ALPHAS) < 0.5  # CV picks a weak ridge


def test_invisible_points_are_neither_fitted_nor_scored():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 64, size=(40, 2))
    targets = np.stack([x, x + 1.0], axis=1)  # two landmarks
    visible = np.ones((40, 2), bool)
    clean = landmark_rmse(x, targets, visible, *_halves(40))
    visible[::3, 1] = False
    targets[::3, 1] = 1e6
    assert landmark_rmse(x, targets, visible, *_halves(40)) == pytest.approx(clean, abs=1e-6)
    with pytest.raises(DataError, match="no visible landmark"):
        landmark_rmse(x, targets, np.zeros_like(visible), *_halves(40))


def test_ridge_tames_sparse_underdetermined_slot_features():
    """As many mostly-zero columns as fitted frames: least squares extrapolates, CV ridge does not."""
    rng = np.random.default_rng(2)
    n, d = 80, 40
    signal = rng.uniform(0, 100, size=n)
    noise = np.where(rng.random((n, d)) < 0.1, rng.uniform(0, 400, size=(n, d)), 0.0)  # sparse junk slots
    x = np.concatenate([signal[:, None], noise], axis=1)
    targets = np.stack([2 * signal + rng.normal(0, 2, n), signal + rng.normal(0, 2, n)], axis=1)[:, None, :]
    visible = np.ones((n, 1), bool)
    fit, test = _halves(n)
    intercept_only = landmark_rmse(x[:, :0], targets, visible, fit, test)
    plain = landmark_rmse(x, targets, visible, fit, test)
    ridge = landmark_rmse(x, targets, visible, fit, test, ALPHAS)
    assert plain > intercept_only  # the failure mode: worse than knowing nothing
    assert ridge < 0.5 * intercept_only  # it found the informative column
