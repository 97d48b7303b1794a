"""Uncalibrated image-based visual servoing: a Broyden-updated composite image Jacobian.

Why this method: learned keypoints have no known 3D meaning, depth or camera
model, so the classic interaction matrix (Chaumette & Hutchinson, IEEE RAM
2006) cannot be written down for them. Uncalibrated IBVS estimates the
composite Jacobian J = ∂s/∂q (features per joint) directly:

- initialised from small exploratory joint motions (Jägersand, Fuentes &
  Nelson, ICRA 1997; Hosoda & Asada, IROS 1994): each joint in turn moves out
  by ``explore_amplitude`` and back while the features are observed, and J is
  the least-squares fit of the feature displacements to the joint
  displacements (both measured, so command latency does not bias it);
- updated online with Broyden's rank-one rule on every measured step,
  J ← J + α (Δs − J Δq) Δqᵀ / (Δqᵀ Δq), skipped when the step is too small for
  the feature noise to average out.

The control law is the IBVS law v = −λ Ĵ⁺ e (Chaumette & Hutchinson 2006) with
e = s − s*, on joint velocities, where Ĵ⁺ is a damped least-squares inverse
(Wampler 1986; Nakamura & Hanafusa 1986) of the weighted Jacobian:

    q̇ = −λ (JᵀW J + μ² I)⁻¹ JᵀW e,    μ = damping · σ_max(W^½ J)

then scaled down as a whole (direction kept) so no joint exceeds
``max_joint_velocity``. A joint at its limit (when limits are given) whose
command points further into it is clamped: removed from the solve, and the
other joints re-solved to do its share. W weights each feature: 0 when it is invalid now or in
the goal, or when its Jacobian rows are smaller than ``motion_threshold`` ×
the largest (a keypoint on the table or an object does not move with the arm,
and its error cannot be reduced by moving the arm).

Features are F×d arrays in any fixed units: d = 2 for the consumer API's
normalised image coordinates ([-1, 1]), d = 3 for its metric coordinates
(X, Y, Z metres in the camera optical frame, from camera_info + depth), where
the depth resolves what one image leaves ambiguous (motion along the camera's
rays); joints are the arm's n joint positions in radians.
The controller is pure numpy: the same object runs in the in-process
benchmark, the gymnasium environment's baseline and the ROS controller node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IBVSConfig:
    """Controller settings (defaults tuned on development episodes, seed 100, ground-truth points)."""

    rate_hz: float = 30.0  # observation / command rate; sets the exploration velocity
    gain: float = 1.5  # λ (1/s): error decay rate when J is right
    damping: float = 0.01  # μ relative to the largest singular value of the weighted Jacobian
    max_joint_velocity: float = 0.5  # rad/s, per joint, the whole vector scaled to respect it
    explore_amplitude: float = 0.08  # rad, how far each joint moves out before coming back
    explore_ticks: int = 4  # ticks out (then as many back) per joint
    broyden_rate: float = 0.2  # α
    broyden_min_step: float = 2e-3  # rad: smaller measured steps do not update J
    motion_threshold: float = 0.15  # weight out features whose J rows are < this × the largest
    min_features: int = 2  # fewer usable features than this: command zero
    limit_margin: float = 0.05  # rad: a joint this close to a limit is not driven further into it
    ramp_speed: float = 0.0  # reference ramp: features per second (units of the features); 0 = no ramp
    ramp_tolerance: float = 0.03  # the ramp waits while the RMS tracking error exceeds this
    weight_power: float = 0.0  # 0: used features weigh 1; p > 0: weight (row norm / largest)^p
    reexplore_window: float = 0.0  # s: re-explore when the error fell less than reexplore_progress over this; 0 = off
    reexplore_progress: float = 0.9  # the error must fall below this fraction of its value a window ago
    reexplore_min_error: float = 0.0  # feature units: no re-exploration below this error (the noise floor)
    max_reexplorations: int = 2  # per goal


class BroydenIBVS:
    """Uncalibrated IBVS controller: explore, then servo with a Broyden-updated Jacobian.

    Usage: :meth:`reset` with the goal features, then :meth:`step` once per new
    observation with the current features, their validity and the joint
    positions measured at the same time; it returns joint velocities (rad/s).
    """

    def __init__(self, num_joints: int, config: IBVSConfig | None = None,
                 lower: np.ndarray | None = None, upper: np.ndarray | None = None, dims: int = 2) -> None:
        self.config = config or IBVSConfig()
        self.num_joints = int(num_joints)
        self.dims = int(dims)  # coordinates per feature: the first ``dims`` columns of an observation table
        if self.dims < 1:
            raise ValueError(f"dims must be at least 1, got {dims}")
        self.lower = np.full(num_joints, -np.inf) if lower is None else np.asarray(lower, float)
        self.upper = np.full(num_joints, np.inf) if upper is None else np.asarray(upper, float)
        self.goal: np.ndarray | None = None
        self.jacobian: np.ndarray | None = None  # 2F×n
        self.weights: np.ndarray | None = None  # F
        self._explore_plan = self._exploration_plan()
        self.reset_state()

    # -- set-up ---------------------------------------------------------------------------
    def _exploration_plan(self) -> list[np.ndarray]:
        """Velocity commands, one per tick: each joint out by the amplitude and back."""
        c = self.config
        speed = c.explore_amplitude * c.rate_hz / c.explore_ticks
        plan = []
        for j in range(self.num_joints):
            out = np.zeros(self.num_joints)
            out[j] = speed
            plan += [out] * c.explore_ticks + [-out] * c.explore_ticks
        return plan

    def reset_state(self) -> None:
        """Forget the Jacobian and start over with exploration (same goal)."""
        self.tick = 0
        self.jacobian = None
        self.weights = None
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (q, s, valid)
        self._prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.last_error: float = float("nan")
        self._errors: list[float] = []  # servoing errors since the last exploration
        self.reexplorations = 0
        self._ramp_start: np.ndarray | None = None
        self.ramp = 1.0 if self.config.ramp_speed <= 0 else 0.0

    def reset(self, goal: np.ndarray, goal_valid: np.ndarray | None = None) -> None:
        """New goal features (F×d, or an F×k table with the d coordinates first) and their validity (F bool);
        exploration starts again."""
        goal = np.asarray(goal, dtype=np.float64)[:, : self.dims]
        self.goal = goal
        self.goal_valid = np.ones(len(goal), bool) if goal_valid is None else np.asarray(goal_valid, bool).copy()
        self.reset_state()

    @property
    def exploring(self) -> bool:
        return self.jacobian is None

    @property
    def exploration_ticks(self) -> int:
        return len(self._explore_plan)

    # -- the loop -------------------------------------------------------------------------
    def step(self, features: np.ndarray, valid: np.ndarray, q: np.ndarray) -> np.ndarray:
        """One observation -> n joint velocities (rad/s).

        ``features`` is F×d or an observation table F×k whose first d
        columns are the coordinates (the score column is ignored); ``valid`` F bool; ``q``
        the n joint positions measured at the image's stamp.
        """
        if self.goal is None:
            raise RuntimeError("BroydenIBVS.step before reset(goal)")
        s = np.asarray(features, dtype=np.float64)[:, : self.dims]
        valid = np.asarray(valid, dtype=bool).reshape(-1) & np.isfinite(s).all(axis=1)
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if s.shape != self.goal.shape or q.shape != (self.num_joints,):
            raise ValueError(f"expected {self.goal.shape} features and {self.num_joints} joints, "
                             f"got {s.shape} and {q.shape}")
        self.tick += 1
        if self.jacobian is None:
            self._samples.append((q.copy(), s.copy(), valid.copy()))
            if len(self._samples) <= len(self._explore_plan):
                return self._explore_plan[len(self._samples) - 1].copy()
            self._fit_jacobian()
        else:
            self._broyden(s, valid, q)
        self._prev = (q.copy(), s.copy(), valid.copy())
        qdot = self._command(s, valid, q)
        if self._stalled():
            # Jägersand et al. 1997: when the Broyden-updated model stops predicting progress, estimate J
            # afresh where the arm is now (the exploration plan moves out and back, so it ends here).
            self.reexplorations += 1
            self.jacobian, self._prev, self._errors = None, None, []
            self._samples = [(q.copy(), s.copy(), valid.copy())]
            return self._explore_plan[0].copy()
        return qdot

    def _stalled(self) -> bool:
        """True when servoing has stopped reducing the error (and re-exploration is allowed)."""
        c = self.config
        if c.reexplore_window <= 0 or self.reexplorations >= c.max_reexplorations or not np.isfinite(self.last_error):
            return False
        self._errors.append(self.last_error)
        window = max(1, int(round(c.reexplore_window * c.rate_hz)))
        if len(self._errors) <= window:
            return False
        now, before = self._errors[-1], self._errors[-1 - window]
        return now > c.reexplore_min_error and now > c.reexplore_progress * before

    def _fit_jacobian(self) -> None:
        """Least-squares J from the exploration samples, feature by feature over the ticks it was valid."""
        qs = np.stack([q for q, _, _ in self._samples])
        ss = np.stack([s for _, s, _ in self._samples])
        vs = np.stack([v for _, _, v in self._samples])
        n_features = ss.shape[1]
        d = self.dims
        jac = np.zeros((d * n_features, self.num_joints))
        for f in range(n_features):
            rows = vs[:, f]
            if rows.sum() < max(self.num_joints + 1, int(0.8 * len(rows))):
                continue  # seen too rarely while exploring: J rows stay 0, weighted out
            dq = qs[rows] - qs[rows].mean(axis=0)
            ds = ss[rows, f] - ss[rows, f].mean(axis=0)
            sol, *_ = np.linalg.lstsq(dq, ds, rcond=1e-6)  # n×2
            jac[d * f : d * f + d] = sol.T
        self.jacobian = jac
        self._samples = []

    def _broyden(self, s: np.ndarray, valid: np.ndarray, q: np.ndarray) -> None:
        if self._prev is None:
            return
        q0, s0, v0 = self._prev
        dq = q - q0
        norm2 = float(dq @ dq)
        if norm2 < self.config.broyden_min_step**2:
            return
        both = valid & v0
        rows = np.repeat(both, self.dims)
        ds = (s - s0).reshape(-1)
        residual = ds - self.jacobian @ dq
        update = self.config.broyden_rate * np.outer(residual, dq) / norm2
        self.jacobian[rows] += update[rows]

    def feature_weights(self, valid: np.ndarray) -> np.ndarray:
        """F weights: 0 unless valid now and in the goal and moving with the arm; else 1 (or graded by motion)."""
        norms = np.linalg.norm(self.jacobian.reshape(-1, self.dims * self.num_joints), axis=1)
        usable = valid & self.goal_valid
        if not usable.any():
            return np.zeros(len(valid))
        largest = norms[usable].max()
        moving = norms >= self.config.motion_threshold * largest
        weights = (usable & moving & (norms > 0)).astype(np.float64)
        if self.config.weight_power > 0 and largest > 0:
            weights *= (norms / largest) ** self.config.weight_power
        return weights

    def _reference(self, s: np.ndarray, valid: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The features to servo to now: the goal, or a point moving along the straight image path to it.

        With ``ramp_speed`` > 0 the reference starts at the features seen when
        servoing starts and moves towards the goal at that speed (the largest
        feature displacement sets the pace), waiting while the arm lags behind
        it. Small steps keep the arm where the Broyden-updated Jacobian is
        valid (image-path planning, as in Mezouar & Chaumette, IEEE T-RA 2002,
        with the simplest path: a straight line in the image).
        """
        if self.ramp >= 1.0:
            return self.goal
        if self._ramp_start is None:
            start = np.where(valid[:, None], s, self.goal)
            self._ramp_start = start
            span = np.abs(start - self.goal)[w > 0].max(initial=0.0)
            self._ramp_step = 1.0 if span <= 0 else self.config.ramp_speed / (self.config.rate_hz * span)
        reference = self._ramp_start + self.ramp * (self.goal - self._ramp_start)
        lag = (s - reference)[(w > 0) & valid]
        if lag.size == 0 or np.sqrt((lag**2).sum(axis=1).mean()) <= self.config.ramp_tolerance:
            self.ramp = min(1.0, self.ramp + self._ramp_step)
            reference = self._ramp_start + self.ramp * (self.goal - self._ramp_start)
        return reference

    def _command(self, s: np.ndarray, valid: np.ndarray, q: np.ndarray) -> np.ndarray:
        c = self.config
        w = self.feature_weights(valid)
        self.weights = w
        error = (s - self._reference(s, valid, w)) * np.sqrt(w)[:, None]
        error[~np.isfinite(error)] = 0.0
        n_used = int((w > 0).sum())
        self.last_error = float(np.sqrt((error**2).sum() / max(n_used, 1)))
        if n_used < c.min_features:
            return np.zeros(self.num_joints)
        rows = np.repeat(np.sqrt(w), self.dims)
        a = self.jacobian * rows[:, None]
        sigma_max = np.linalg.norm(a, 2)
        if sigma_max <= 0:
            return np.zeros(self.num_joints)
        mu2 = (c.damping * sigma_max) ** 2
        # Joint-limit clamping: a joint at a limit whose command points further into it is taken out
        # of the solve (its column zeroed) and the rest re-solved, until no command points outward.
        free = np.ones(self.num_joints, bool)
        at_lower, at_upper = q <= self.lower + c.limit_margin, q >= self.upper - c.limit_margin
        for _ in range(self.num_joints):
            af = a * free[None, :]
            qdot = -c.gain * np.linalg.solve(af.T @ af + mu2 * np.eye(self.num_joints), af.T @ error.reshape(-1))
            blocked = free & ((at_lower & (qdot < 0)) | (at_upper & (qdot > 0)))
            if not blocked.any():
                break
            free &= ~blocked
        qdot[~free] = 0.0
        peak = np.abs(qdot).max()
        if peak > c.max_joint_velocity:
            qdot *= c.max_joint_velocity / peak
        return qdot
