"""The one registry of model kinds: what each kind is built from, trained, evaluated and served with.

Why one table: the kinds used to be listed in the sidecar, the checkpoint
reader, the encoders, the train CLI, the method registry, the config loader,
the demo, the launch helper and a test, and adding a kind meant finding all of
them. Every one of those now reads :data:`KINDS`. Adding a kind is one entry
here plus the kind's own modules (encoder, method, evaluator, config).

Importing this module imports nothing heavy: code is named by
``"module:attribute"`` strings and imported only when used (:func:`resolve`),
so the robot side can read the table without torch or the training package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from kp_perception.errors import ConfigError

PYRAMID = "pyramid"  # outputs a keypoint hierarchy (KeypointPyramid)
DETECTIONS = "detections"  # outputs prototype detections (PrototypeDetectionArray)


@dataclass(frozen=True)
class Node:
    """A ROS node and what it publishes; ``name`` is also its launch file and parameter file stem."""

    name: str  # "pyramids" -> pyramids_node, launch/pyramids.launch.py, config/pyramids.yaml
    message: str  # ROS type of its main output
    output_topic: str  # default output topic (the parameter file may rename it)

    @property
    def executable(self) -> str:
        return f"{self.name}_node"


@dataclass(frozen=True)
class Kind:
    """One model kind. Strings ``"module:attribute"`` are imported only when used."""

    name: str
    family: str  # PYRAMID or DETECTIONS: the sidecar's output contract and the node that serves it
    encoder: str  # robot-side torch module (kp_perception.models); its keyword arguments are the ``model`` section
    method: str  # training method (a TrainingMethod subclass; its ``config_class`` types the config)
    evaluator: str  # evaluate(checkpoint, data_paths, annotations, out_dir, seed=0) -> dict
    default_config: str | None  # config/training/<name>.yaml used without --config; None: the code's defaults
    encoder_fixed: dict[str, Any] = field(default_factory=dict)  # keyword arguments the user cannot set
    encoder_defaults: dict[str, Any] = field(default_factory=dict)  # this kind's defaults for the encoder
    shipped_model: bool = False  # models/<name>.onnx ships with the repository (``kp-perception demo``)

    @property
    def node(self) -> Node:
        return NODES[self.family]


NODES: dict[str, Node] = {
    PYRAMID: Node("pyramids", "kp_perception_msgs/msg/KeypointPyramid", "keypoints"),
    DETECTIONS: Node("tusk", "kp_perception_msgs/msg/PrototypeDetectionArray", "detections"),
}

_PYRAMIDS_ENCODER = "kp_perception.models.pyramids_encoder:PyramidsEncoder"
_PYRAMIDS_EVALUATOR = "kp_perception_training.pyramids.evaluate:evaluate"
# KeyNet and Transporter: the same encoder, one flat level on the finest FPN map of the L = 2 FPN.
_FLAT = {"encoder_fixed": {"flat": True}, "encoder_defaults": {"keypoints_per_level": (30,)}}

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "pyramids", PYRAMID, _PYRAMIDS_ENCODER,
            method="kp_perception_training.pyramids.method:PyramidsMethod",
            evaluator=_PYRAMIDS_EVALUATOR, default_config=None, encoder_fixed={"flat": False}, shipped_model=True,
        ),
        Kind(
            "keynet", PYRAMID, _PYRAMIDS_ENCODER,
            method="kp_perception_training.pyramids.baselines:KeyNetMethod",
            evaluator=_PYRAMIDS_EVALUATOR, default_config=None, **_FLAT,
        ),
        Kind(
            "transporter", PYRAMID, _PYRAMIDS_ENCODER,
            method="kp_perception_training.pyramids.baselines:TransporterMethod",
            evaluator=_PYRAMIDS_EVALUATOR, default_config=None, **_FLAT,
        ),
        Kind(
            "tusk", DETECTIONS, "kp_perception.models.tusk_encoder:TuskEncoder",
            method="kp_perception_training.tusk.method:TuskMethod",
            evaluator="kp_perception_training.tusk.evaluate:evaluate",
            default_config="tusk_tetrominoes", shipped_model=True,
        ),
    )
}

KIND_NAMES: tuple[str, ...] = tuple(KINDS)
PYRAMID_KINDS: tuple[str, ...] = tuple(k for k, v in KINDS.items() if v.family == PYRAMID)


def get_kind(name: str) -> Kind:
    """The registry entry of ``name``; an unknown kind is a ConfigError listing the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown model kind {name!r}, expected one of {', '.join(KINDS)}") from None


def resolve(spec: str, what: str) -> Any:
    """Import ``"module:attribute"``; a missing module or attribute is a ConfigError naming ``what``."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"{what} {spec!r} is not available (module {exc.name} not found)") from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}") from None
