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


def _scene(rng, episodes=8, frames=20):
    """An arm point that the keypoints follow, and a mug that stays put within an episode, moving between them."""
    from kp_perception_training.sim.annotations import Annotation

    rows, coords, keys = [], [], []
    for e in range(episodes):
        mug = rng.uniform(10, 54, size=2)
        for f in range(frames):
            arm = rng.uniform(0, 64, size=2)
            keys.append((f"episode_{e:03d}", f))
            coords.append([arm + 1.0, rng.uniform(0, 64, size=2)])  # keypoint 0 on the arm, keypoint 1 noise
            rows += [Annotation(f"episode_{e:03d}", f, "arm/link7", *arm), Annotation(f"episode_{e:03d}", f, "gripper", *(arm + 2)),
                     Annotation(f"episode_{e:03d}", f, "mug/centre", *mug)]
    return rows, np.array(coords), keys


def test_scores_split_by_landmark_group_come_from_the_same_fits():
    """Robot points that the keypoints follow score ~0; a mug they ignore scores like the intercept alone."""
    from kp_perception_training.pyramids.evaluate import landmark_scores

    rows, coords, keys = _scene(np.random.default_rng(3))
    out = landmark_scores(coords, [1, 1], rows, keys, seed=0, ridge=False)
    groups = out["rmse_px_by_group"]
    assert set(groups) == {"robot", "objects"} and "rmse_px_ridge" not in out
    assert groups["robot"]["level_1"] < 1e-6 and groups["robot"]["level_2"] > 5.0
    assert groups["objects"]["level_1"] > 0.8 * out["rmse_px_intercept_only_by_group"]["objects"]
    # the two groups pool back to the all-landmark figure: 2 robot landmarks for every mug landmark
    pooled = np.sqrt((2 * groups["robot"]["flattened"] ** 2 + groups["objects"]["flattened"] ** 2) / 3)
    assert out["rmse_px"]["flattened"] == pytest.approx(pooled, rel=1e-9)


def test_no_split_when_every_landmark_is_in_one_group():
    from kp_perception_training.pyramids.evaluate import landmark_scores

    rows, coords, keys = _scene(np.random.default_rng(4), episodes=3)
    robot_only = [a for a in rows if "/" not in a.name or a.name.startswith("arm/")]
    out = landmark_scores(coords, [2], robot_only, keys, seed=0, ridge=False)
    assert "rmse_px_by_group" not in out and out["rmse_px"]["level_1"] < 1e-6
