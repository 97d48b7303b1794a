"""The one checkpoint format, shared by the trainer, export and the torch backend.

A checkpoint is a dict saved with ``torch.save``::

    {
      "format": "kp_perception.checkpoint", "format_version": 1,
      "kind": a kind of kp_perception.kinds (pyramids, keynet, transporter, tusk),
      "config": {...},             # resolved training config, plain YAML types
      "encoder": state_dict,       # the robot-side encoder (what export needs)
      "training": {...},           # everything else: decoders, optimisers, step, RNG states
    }

Saving is atomic (temporary file, fsync, rename) so an interrupted run never
leaves a half-written ``last.pt``. Loading always uses ``weights_only=True``:
a checkpoint is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kp_perception.atomic import atomic_path
from kp_perception.errors import ModelLoadError
from kp_perception.kinds import KIND_NAMES

FORMAT = "kp_perception.checkpoint"
FORMAT_VERSION = 1
KINDS = KIND_NAMES


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically, stamping the format fields."""
    import torch

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **checkpoint}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_failure(exc: Exception) -> str:
    """torch.load's reason in one line, without its advice to retry with ``weights_only=False``.

    That advice means running whatever code the file holds; a checkpoint is data, so it is never taken.
    """
    text = str(exc).strip()
    if "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0] if "WeightsUnpickler error:" in text \
            else ""
        detail = " ".join(detail.split())
        return "corrupt, or it holds objects other than tensors and plain data" + (f": {detail}" if detail else "")
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if "weights_only" not in first else type(exc).__name__


def load_checkpoint(path: str | Path, expected_kind: str | None = None) -> dict[str, Any]:
    """Load and validate a checkpoint; raise ``ModelLoadError`` naming the file and the problem."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise ModelLoadError(f"{path}: not a readable kp_perception checkpoint ({_load_failure(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not a kp_perception checkpoint (no '{FORMAT}' format tag)")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: checkpoint format version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    kind = data.get("kind")
    if kind not in KINDS:
        raise ModelLoadError(f"{path}: unknown model kind {kind!r}, expected one of {', '.join(KINDS)}")
    if expected_kind is not None and kind != expected_kind:
        raise ModelLoadError(f"{path}: model kind is {kind!r}, expected {expected_kind!r}")
    for key in ("config", "encoder"):
        if key not in data:
            raise ModelLoadError(f"{path}: checkpoint has no '{key}' entry")
    return data
