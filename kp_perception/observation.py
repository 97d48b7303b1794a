"""The policy observation and its consumer API: fixed slots, a validity mask, a gymnasium space, pairing.

Why one module for both sides: a policy trained in-process (an environment
calling :func:`observe` on a backend's result) must see exactly what the
node publishes on the ROS topic (the node calls the same :func:`observe`,
then ``ros_conversion.observation_to_msg``). Importing this module imports
numpy only: no torch, no rclpy (messages are duck-typed), and gymnasium
only inside :func:`observation_space`.

The observation is a slots × fields float32 table plus one validity flag
per slot (``docs/nodes.md`` draws both layouts):

* slots: Keypoint Pyramids (and KeyNet/Transporter) one per keypoint, in
  keypoint-index order, coarse to fine (``level<l>/kp<i>``); TUSK one per
  prototype (``prototype<m>``), holding that prototype's highest-scoring
  detection. Row i means the same thing in every frame.
* fields: ``coordinates="normalized"``: x, y in [-1, 1] (-1 and 1 are the
  centres of the first and last pixel, the models' convention) and score;
  ``coordinates="metric"``: x, y, z in metres in the camera optical frame
  and score.
* invalid slots (score under the threshold, no detection of that prototype,
  or, in metric, no valid depth) hold NaN in the message and in
  :attr:`KeypointObservation.values`; :meth:`KeypointObservation.filled`
  replaces them for a network.

Typical use (docs/robot_guide.md has the whole policy loop)::

    space = observation_space("models/pyramids.onnx")      # before the first frame
    obs = KeypointObservation.from_msg(msg)                # kp_perception_msgs/PolicyObservation
    sample = obs.as_dict()                                 # in space: {"keypoints": S×F, "valid": S}
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.errors import ObservationError
from kp_perception.results import KeypointPyramidResult, PrototypeDetectionResult
from kp_perception.sidecar import HIERARCHY_KINDS, Sidecar, read_sidecar, sidecar_path
from kp_perception.stamp_matching import StampBuffer, stamp_to_ns

__all__ = [
    "COORDINATES",
    "KeypointObservation",
    "ObservationError",
    "ObservationJointPairer",
    "ObservationLayout",
    "PairedObservation",
    "joint_vector",
    "observation_space",
    "observe",
]

#: The two coordinate modes, and the fields (columns) each gives.
COORDINATES: dict[str, tuple[str, ...]] = {
    "normalized": ("x", "y", "score"),
    "metric": ("x", "y", "z", "score"),
}
_BOUNDS = {  # per field: (low, high) of the gymnasium Box
    ("normalized", "x"): (-1.0, 1.0),
    ("normalized", "y"): (-1.0, 1.0),
    ("metric", "x"): (-np.inf, np.inf),
    ("metric", "y"): (-np.inf, np.inf),
    ("metric", "z"): (0.0, np.inf),
}


@dataclass(frozen=True)
class ObservationLayout:
    """What each row and column of an observation means; known from the model's sidecar alone."""

    kind: str
    coordinates: str
    slot_names: tuple[str, ...]
    field_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(slots, fields) of :attr:`KeypointObservation.values`."""
        return len(self.slot_names), len(self.field_names)

    @classmethod
    def from_sidecar(cls, sidecar: Sidecar | str | Path, coordinates: str = "normalized") -> ObservationLayout:
        """The layout of a model: a :class:`Sidecar`, or the path of the model or its sidecar JSON."""
        if not isinstance(sidecar, Sidecar):
            path = Path(sidecar)
            sidecar = read_sidecar(path if path.suffix == ".json" else sidecar_path(path))
        fields = _fields(coordinates)
        if sidecar.kind in HIERARCHY_KINDS:
            slots = tuple(f"level{lv}/kp{i}" for lv, size in enumerate(sidecar.level_sizes) for i in range(size))
        else:
            slots = tuple(f"prototype{m}" for m in range(sidecar.num_prototypes))
        return cls(kind=sidecar.kind, coordinates=coordinates, slot_names=slots, field_names=fields)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """S×F float32 (low, high): x, y in [-1, 1] (normalized) or unbounded (metric), z >= 0, score in [0, 1]."""
        low = np.array([_BOUNDS.get((self.coordinates, f), (0.0, 1.0))[0] for f in self.field_names], np.float32)
        high = np.array([_BOUNDS.get((self.coordinates, f), (0.0, 1.0))[1] for f in self.field_names], np.float32)
        shape = self.shape
        return np.broadcast_to(low, shape).copy(), np.broadcast_to(high, shape).copy()


def _fields(coordinates: str) -> tuple[str, ...]:
    try:
        return COORDINATES[coordinates]
    except KeyError:
        raise ObservationError(
            f"coordinates {coordinates!r} is not one of {', '.join(COORDINATES)}"
        ) from None


@dataclass(frozen=True)
class KeypointObservation:
    """One observation as numpy: ``values`` S×F float32 (NaN in invalid slots) and ``valid`` S bool.

    Attributes:
        stamp_ns: the camera image's stamp in nanoseconds (0 when unstamped).
        frame_id: the camera optical frame the metric coordinates are in.
        layout: slot and field names, model kind and coordinate mode.
        values: S×F float32, row i = slot ``layout.slot_names[i]``.
        valid: S bool.
        image_width, image_height: the input image's size in pixels.
    """

    stamp_ns: int
    frame_id: str
    layout: ObservationLayout
    values: np.ndarray
    valid: np.ndarray
    image_width: int = 0
    image_height: int = 0

    @classmethod
    def from_msg(cls, msg: Any, expected: ObservationLayout | None = None) -> KeypointObservation:
        """A ``kp_perception_msgs/PolicyObservation`` (rclpy or rosbags) -> arrays, checked for shape.

        With ``expected`` (e.g. ``ObservationLayout.from_sidecar(model)``), a message
        from another model or coordinate mode raises :class:`ObservationError`
        instead of feeding the policy rows that mean something else.
        """
        layout = ObservationLayout(
            kind=str(msg.model_kind),
            coordinates=str(msg.coordinates),
            slot_names=tuple(str(s) for s in msg.slot_names),
            field_names=tuple(str(f) for f in msg.field_names),
        )
        slots, fields = layout.shape
        data = np.asarray(msg.data, dtype=np.float32)
        valid = np.asarray(msg.valid, dtype=bool)
        if data.size != slots * fields or valid.size != slots:
            raise ObservationError(
                f"PolicyObservation holds {data.size} values and {valid.size} flags, expected "
                f"{slots}x{fields} = {slots * fields} values and {slots} flags"
            )
        if expected is not None and layout != expected:
            raise ObservationError(f"PolicyObservation layout {_describe(layout)} differs from {_describe(expected)}")
        return cls(
            stamp_ns=stamp_to_ns(msg.header),
            frame_id=str(msg.header.frame_id),
            layout=layout,
            values=data.reshape(slots, fields),
            valid=valid,
            image_width=int(getattr(msg, "image_width", 0)),
            image_height=int(getattr(msg, "image_height", 0)),
        )

    @property
    def stamp(self) -> float:
        """The image stamp in seconds."""
        return self.stamp_ns * 1e-9

    def filled(self, fill: float = 0.0) -> np.ndarray:
        """S×F float32 copy with every invalid slot set to ``fill`` (a network cannot take NaN)."""
        out = np.array(self.values, dtype=np.float32, copy=True)
        out[~self.valid] = fill
        return out

    def as_dict(self, fill: float = 0.0) -> dict[str, np.ndarray]:
        """``{"keypoints": S×F float32, "valid": S int8}``: a sample of :func:`observation_space`."""
        return {"keypoints": self.filled(fill), "valid": self.valid.astype(np.int8)}

    def field(self, name: str) -> np.ndarray:
        """One column (e.g. "z") over all slots, NaN where invalid."""
        try:
            return self.values[:, self.layout.field_names.index(name)]
        except ValueError:
            raise ObservationError(f"no field {name!r}; fields are {', '.join(self.layout.field_names)}") from None


def _describe(layout: ObservationLayout) -> str:
    return f"({layout.kind}, {layout.coordinates}, {layout.shape[0]} slots x {','.join(layout.field_names)})"


def observe(
    result: KeypointPyramidResult | PrototypeDetectionResult,
    layout: ObservationLayout,
    *,
    threshold: float = 0.0,
    stamp_ns: int = 0,
    frame_id: str = "",
) -> KeypointObservation:
    """A backend result (frame pixels, optional camera geometry) -> the fixed-slot observation.

    The node calls this for every frame; an in-process environment calling it
    on the same result gets the same arrays. A slot is valid when its score is
    at least ``threshold`` and, for ``metric``, its 3D point is valid
    (``result.points``/``point_valid``, from ``camera_geometry.locate_keypoints``).
    TUSK slots hold, per prototype, the highest-scoring detection that passes
    the threshold; a prototype with none is an invalid slot.
    """
    slots, fields = layout.shape
    xy = np.asarray(result.xy, dtype=np.float32).reshape(-1, 2)
    scores = np.asarray(result.scores, dtype=np.float32).reshape(-1)
    n = len(scores)
    if isinstance(result, PrototypeDetectionResult):
        protos = np.asarray(result.prototypes, dtype=np.int64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        order = order[(scores[order] >= threshold) & (protos[order] >= 0) & (protos[order] < slots)]
        first_slot, first_at = np.unique(protos[order], return_index=True)  # first in score order = best
        source = np.full(slots, -1, dtype=np.int64)
        source[first_slot] = order[first_at]
    else:
        if n != slots:
            raise ObservationError(f"result has {n} keypoints but the layout has {slots} slots (another model?)")
        source = np.where(scores >= threshold, np.arange(n), -1)

    has = source >= 0
    src = np.where(has, source, 0)
    table = np.full((slots, fields), np.nan, dtype=np.float32)
    if layout.coordinates == "normalized":
        width, height = int(result.image_width), int(result.image_height)
        norm = np.empty((n, 2), np.float32)
        norm[:, 0] = 2.0 * xy[:, 0] / max(width - 1, 1) - 1.0
        norm[:, 1] = 2.0 * xy[:, 1] / max(height - 1, 1) - 1.0
        coords = np.clip(norm, -1.0, 1.0)
        valid = has.copy()
    else:
        if result.points is None or result.point_valid is None:
            coords = np.full((n, 3), np.nan, np.float32)
            point_ok = np.zeros(n, dtype=bool)
        else:
            coords = np.asarray(result.points, dtype=np.float32).reshape(-1, 3)
            point_ok = np.asarray(result.point_valid, dtype=bool).reshape(-1)
        valid = has & (point_ok[src] if n else has)
    if n:
        table[:, :-1] = coords[src]
        table[:, -1] = scores[src]
    table[~valid] = np.nan
    return KeypointObservation(
        stamp_ns=int(stamp_ns),
        frame_id=str(frame_id),
        layout=layout,
        values=table,
        valid=valid,
        image_width=int(result.image_width),
        image_height=int(result.image_height),
    )


def observation_space(model: Sidecar | ObservationLayout | str | Path, coordinates: str = "normalized"):
    """The ``gymnasium.spaces.Dict`` every :meth:`KeypointObservation.as_dict` sample lies in.

    ``{"keypoints": Box(S×F, float32), "valid": MultiBinary(S)}``, built from
    the model's sidecar (or a layout), so a policy's networks can be sized
    before the first frame. gymnasium is imported here, not with the module.
    """
    import gymnasium.spaces as spaces

    layout = model if isinstance(model, ObservationLayout) else ObservationLayout.from_sidecar(model, coordinates)
    low, high = layout.bounds()
    return spaces.Dict(
        {
            "keypoints": spaces.Box(low=low, high=high, shape=layout.shape, dtype=np.float32),
            "valid": spaces.MultiBinary(layout.shape[0]),
        }
    )


# --- pairing with /joint_states -------------------------------------------------------------------


@dataclass(frozen=True)
class PairedObservation:
    """An observation and the joint state nearest to it in stamp.

    ``dt`` is joint-state stamp minus observation stamp, in seconds.
    """

    observation: KeypointObservation
    joint_state: Any
    dt: float


class ObservationJointPairer:
    """Keeps the newest observation and recent /joint_states; pairs them by stamp within a tolerance.

    Why a short joint-state history and not only the newest one: joint states
    come at 100-1000 Hz while an observation arrives one inference latency
    after its image was taken, so the newest joint state is already later
    than the image. Pairing looks up the joint state whose stamp is nearest
    to the image's. Feed it from your subscriptions (any executor thread);
    it does not import rclpy.
    """

    def __init__(self, tolerance: float = 0.02, joint_history: int = 200,
                 expected: ObservationLayout | None = None) -> None:
        self.tolerance_ns = int(round(tolerance * 1e9))
        self.expected = expected
        self._joints: StampBuffer[Any] = StampBuffer(joint_history)
        self._observation: KeypointObservation | None = None
        self._lock = threading.Lock()

    def add_observation(self, msg: Any) -> KeypointObservation:
        """A PolicyObservation message (or a :class:`KeypointObservation`); returns it as arrays."""
        obs = msg if isinstance(msg, KeypointObservation) else KeypointObservation.from_msg(msg, self.expected)
        with self._lock:
            if self._observation is None or obs.stamp_ns >= self._observation.stamp_ns:
                self._observation = obs
        return obs

    def add_joint_state(self, msg: Any) -> None:
        """A sensor_msgs/JointState."""
        self._joints.add(stamp_to_ns(msg.header), msg)

    def latest(self) -> PairedObservation | None:
        """The newest observation with its joint state, or None (no observation, or no joint state in tolerance)."""
        with self._lock:
            obs = self._observation
        if obs is None:
            return None
        found = self._joints.nearest(obs.stamp_ns, self.tolerance_ns)
        if found is None:
            return None
        joint_state, dt_ns = found
        return PairedObservation(observation=obs, joint_state=joint_state, dt=dt_ns * 1e-9)


def joint_vector(joint_state: Any, names: list[str] | tuple[str, ...], field: str = "position") -> np.ndarray:
    """The ``field`` (position, velocity, effort) of ``names``, in that order, as float64.

    Why: JointState lists joints in the driver's order, which may differ per
    message and per robot; a policy wants a fixed order.
    """
    index = {str(n): i for i, n in enumerate(joint_state.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ObservationError(f"JointState lacks joint(s) {', '.join(missing)}; it has {', '.join(index)}")
    values = np.asarray(getattr(joint_state, field), dtype=np.float64)
    if values.size != len(index):
        raise ObservationError(f"JointState {field} has {values.size} entries for {len(index)} joints")
    return values[[index[n] for n in names]]
