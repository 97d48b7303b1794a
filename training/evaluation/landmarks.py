"""Landmark regression: a linear map from keypoint coordinates to annotated landmarks, RMSE in pixels.

Both models are scored this way (Keypoint Pyramids Table 1; TUSK's landmark
protocol): fit on one half of the annotated frames, score on the other.

Plain least squares (the reference protocol, ``alphas=(0.0,)``) is right for
Keypoint Pyramids, whose input is every keypoint in every frame: tens of dense
columns, hundreds of frames. TUSK's input is the reference's prototype-slot
layout, M×K×2 columns that are mostly zeros; with as many columns as fitted
frames the minimum-norm solution fits noise and extrapolates (a 200 000 px RMSE
was seen). There ridge regression on standardised columns, its strength chosen
by cross-validation inside the fit half (the scored half is never looked at),
gives a figure that means something.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kp_perception.errors import DataError

CV_FOLDS = 5


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, alpha: float) -> np.ndarray:
    """Linear model with an unpenalised intercept; alpha > 0 is ridge on standardised columns."""
    if alpha == 0.0:
        design = np.concatenate([x_fit, np.ones((len(x_fit), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(design, y_fit, rcond=None)
        return np.concatenate([x_new, np.ones((len(x_new), 1))], axis=1) @ coef
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    xs = (x_fit - mean) / std
    y_mean = y_fit.mean(axis=0)
    gram = xs.T @ xs + alpha * np.eye(xs.shape[1])
    coef = np.linalg.solve(gram, xs.T @ (y_fit - y_mean))
    return ((x_new - mean) / std) @ coef + y_mean


def _cv_alpha(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> float:
    """The alpha with the lowest CV_FOLDS-fold squared error on (x, y); ties go to the first listed."""
    if len(alphas) == 1 or len(x) < CV_FOLDS:
        return float(alphas[0])
    folds = np.arange(len(x)) % CV_FOLDS
    errors = []
    for alpha in alphas:
        sq = 0.0
        for f in range(CV_FOLDS):
            held = folds == f
            sq += float(((_fit_predict(x[~held], y[~held], x[held], float(alpha)) - y[held]) ** 2).sum())
        errors.append(sq)
    return float(alphas[int(np.argmin(errors))])


def landmark_rmse(
    features: np.ndarray,
    targets: np.ndarray,
    visible: np.ndarray,
    fit_rows: np.ndarray,
    test_rows: np.ndarray,
    alphas: Sequence[float] = (0.0,),
) -> float:
    """Regression RMSE in pixels over the visible (test frame, landmark) pairs.

    Args:
        features: F×D keypoint coordinates per frame (D may be 0: intercept only).
        targets: F×P×2 landmark pixels; visible: F×P bool. Each landmark is fitted
            only on frames where it is visible and scored only where it is visible.
        fit_rows, test_rows: disjoint frame indices.
        alphas: ridge strengths to choose from by cross-validation on the fit rows;
            the default (0.0,) is plain least squares.
    """
    sq_err, count = 0.0, 0
    for p in range(targets.shape[1]):
        fit = fit_rows[visible[fit_rows, p]]
        test = test_rows[visible[test_rows, p]]
        if len(fit) == 0 or len(test) == 0:
            continue
        alpha = _cv_alpha(features[fit], targets[fit, p], alphas)
        err = _fit_predict(features[fit], targets[fit, p], features[test], alpha) - targets[test, p]
        sq_err += float((err**2).sum())
        count += len(test)
    if count == 0:
        raise DataError("no visible landmark in both halves of the annotated frames; cannot score")
    return float(np.sqrt(sq_err / count))
