"""Robot-side torch encoders, built by kind; each kind imports its module only when asked for.

``build_encoder(kind, model_config)`` is the one way the trainer, export and
the torch backend make an encoder: ``checkpoint["config"]["model"]`` is exactly
``model_config`` and ``checkpoint["kind"]`` is ``kind``.
"""

from __future__ import annotations

import importlib
from typing import Any

from kp_perception.errors import ConfigError

# kind -> ("module:Class", fixed kwargs added to the model config)
_ENCODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "pyramids": ("kp_perception.models.pyramids_encoder:PyramidsEncoder", {}),
    # KeyNet and Transporter: the same encoder, one flat level on the finest FPN map.
    "keynet": ("kp_perception.models.pyramids_encoder:PyramidsEncoder", {"flat": True}),
    "transporter": ("kp_perception.models.pyramids_encoder:PyramidsEncoder", {"flat": True}),
    "tusk": ("kp_perception.models.tusk_encoder:TuskEncoder", {}),
}

ENCODER_KINDS = tuple(_ENCODERS)


def build_encoder(kind: str, model_config: dict[str, Any]):
    """Build the encoder ``kind`` with ``model_config`` as keyword arguments (returns an nn.Module)."""
    if kind not in _ENCODERS:
        raise ConfigError(f"unknown model kind {kind!r}, expected one of {', '.join(_ENCODERS)}")
    target, fixed = _ENCODERS[kind]
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = {**dict(model_config or {}), **fixed}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model config for {kind!r} is invalid: {exc}") from None
