"""Landmark regression: a linear map from keypoint coordinates to annotated landmarks, RMSE in pixels.

Both models are scored this way (Keypoint Pyramids Table 1; TUSK's landmark
protocol): fit on one half of the annotated frames, score on the other.

Plain least squares (the reference protocol, ``alphas=(0.0,)``; scikit-learn's
``LinearRegression``) is right for Keypoint Pyramids, whose input is every
keypoint in every frame: tens of dense columns, hundreds of frames. TUSK's
input is the reference's prototype-slot layout, M×K×2 columns that are mostly
zeros; with as many columns as fitted frames the minimum-norm solution fits
noise and extrapolates (a 200 000 px RMSE was seen). There ridge regression on
standardised columns (``StandardScaler`` + ``RidgeCV``), its strength chosen by
5-fold cross-validation inside the fit half (the scored half is never looked
at), gives a figure that means something.

These replaced hand-written numpy fits. Side by side on synthetic data they
gave the same RMSE to 4 decimals for a determined least-squares fit and for the
CV ridge; for an underdetermined least-squares fit (more columns than rows) the
minimum-norm solutions differ (``LinearRegression`` centres the data first),
which is the case the ridge is there for. The ridge is ~6x slower (0.4 s per
landmark with 8 alphas on a shared CPU), negligible next to running the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LinearRegression, Ridge, RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kp_perception.errors import DataError

CV_FOLDS = 5
# Ridge strengths chosen among by CV_FOLDS-fold CV (contiguous folds of the fit half, no shuffle).
# Fixed once for TUSK's slot input and reused unchanged as the ridge column of the Keypoint Pyramids
# benchmark (every method, every level): they were not chosen by looking at any benchmark result.
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def _regressor(alphas: Sequence[float], rows: int):
    """Least squares for ``(0.0,)``; else ridge on standardised columns, alpha by CV_FOLDS-fold CV.

    With fewer fitted rows than folds the first alpha is used (no CV possible).
    """
    if tuple(alphas) == (0.0,):
        return LinearRegression()
    if len(alphas) == 1 or rows < CV_FOLDS:
        return make_pipeline(StandardScaler(), Ridge(alpha=float(alphas[0])))
    return make_pipeline(StandardScaler(), RidgeCV(alphas=tuple(float(a) for a in alphas), cv=KFold(CV_FOLDS)))


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Linear model with an unpenalised intercept; no feature columns = the intercept (the mean) alone."""
    if x_fit.shape[1] == 0:
        return np.repeat(y_fit.mean(axis=0, keepdims=True), len(x_new), axis=0)
    return _regressor(alphas, len(x_fit)).fit(x_fit, y_fit).predict(x_new)


def landmark_errors(
    features: np.ndarray,
    targets: np.ndarray,
    visible: np.ndarray,
    fit_rows: np.ndarray,
    test_rows: np.ndarray,
    alphas: Sequence[float] = (0.0,),
) -> tuple[np.ndarray, np.ndarray]:
    """Per landmark: the summed squared error (px²) over its scored frames, and how many frames were scored.

    The arguments are those of :func:`landmark_rmse`; a landmark not visible in both halves scores 0 frames.
    Kept per landmark so that one set of fits gives the RMSE of any group of landmarks (:func:`pooled_rmse`).
    """
    points = targets.shape[1]
    sq_err, count = np.zeros(points), np.zeros(points, dtype=np.int64)
    for p in range(points):
        fit = fit_rows[visible[fit_rows, p]]
        test = test_rows[visible[test_rows, p]]
        if len(fit) == 0 or len(test) == 0:
            continue
        err = _fit_predict(features[fit], targets[fit, p], features[test], alphas) - targets[test, p]
        sq_err[p], count[p] = float((err**2).sum()), len(test)
    return sq_err, count


def pooled_rmse(sq_err: np.ndarray, count: np.ndarray, members: np.ndarray | None = None) -> float:
    """RMSE (px) over the scored (frame, landmark) pairs of the landmarks in ``members`` (P bool; None: all)."""
    if members is not None:
        sq_err, count = sq_err[members], count[members]
    total = int(count.sum())
    if total == 0:
        raise DataError("no visible landmark in both halves of the annotated frames; cannot score")
    return float(np.sqrt(sq_err.sum() / total))


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
    return pooled_rmse(*landmark_errors(features, targets, visible, fit_rows, test_rows, alphas))
