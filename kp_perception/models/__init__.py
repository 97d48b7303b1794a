"""Robot-side torch encoders, built by kind; each kind imports its module only when asked for.

``build_encoder(kind, model_config)`` is the one way the trainer, export and
the torch backend make an encoder: ``checkpoint["config"]["model"]`` is the
``model`` section and ``checkpoint["kind"]`` is ``kind``. Which class a kind
uses, and its fixed arguments, is the registry's (``kp_perception.kinds``).

The ``model`` section of a config is exactly the encoder's keyword arguments:
:func:`model_section` makes its typed, strict dataclass from the encoder's
signature, so the signature is the one place those defaults are written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kp_perception.kinds import get_kind, resolve
from kp_perception.typed_config import parse, section_from_signature


def model_section(kind: str) -> type:
    """The frozen dataclass of ``kind``'s ``model`` section (its encoder's settable keyword arguments)."""
    entry = get_kind(kind)
    encoder = resolve(entry.encoder, f"encoder of kind {kind!r}")
    name = "".join(part.title() for part in kind.split("_")) + "Model"
    defaults = tuple(sorted(entry.encoder_defaults.items()))
    return section_from_signature(encoder, name, tuple(sorted(entry.encoder_fixed)), defaults)


def build_encoder(kind: str, model_config: Any = None):
    """Build the encoder ``kind`` from its ``model`` section (a mapping or the section's dataclass).

    Unknown keys and wrong types are a ConfigError naming ``model.<key>``.
    """
    entry = get_kind(kind)
    section = parse(model_section(kind), model_config, "model")
    cls = resolve(entry.encoder, f"encoder of kind {kind!r}")
    kwargs = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    return cls(**kwargs, **entry.encoder_fixed)
