"""Small real models for tests: an initial-weights checkpoint exported to ONNX + sidecar.

Contract C: ``make_model(kind, out_dir, image_size=64) -> Path`` to the ``.onnx``
(the sidecar is next to it, the checkpoint is ``<kind>.pt`` beside both). The
encoders are the real ones (``kp_perception.models.build_encoder``), kept
small so an export takes seconds on a shared 2-core CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# Model configs per kind: real encoders, small widths. Unknown kinds fall back to the encoder defaults.
SMALL_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "pyramids": {"keypoints_per_level": [4, 8], "fpn_channels": 16, "width": 8, "head_channels": 16},
    "keynet": {"keypoints_per_level": [8], "fpn_channels": 16, "width": 8, "head_channels": 16},
    "transporter": {"keypoints_per_level": [8], "fpn_channels": 16, "width": 8, "head_channels": 16},
    "tusk": {"num_keypoints": 3, "num_prototypes": 8, "nms_window": 9, "width": 8, "descriptor_dim": 8},
}


def make_checkpoint(kind: str, out_dir: Path, image_size: int | tuple[int, int] = 64, seed: int = 0) -> Path:
    """Build ``kind`` at initial weights (seeded) and save it as ``out_dir/<kind>.pt``."""
    import torch

    from kp_perception.checkpoint import save_checkpoint
    from kp_perception.models import build_encoder

    torch.manual_seed(seed)
    model_config = dict(SMALL_MODEL_CONFIGS.get(kind, {}))
    encoder = build_encoder(kind, model_config)
    size = image_size if isinstance(image_size, int) else list(image_size)
    config = {"model": model_config, "data": {"image_size": size}}
    path = Path(out_dir) / f"{kind}.pt"
    save_checkpoint(path, {"kind": kind, "config": config, "encoder": encoder.state_dict(), "training": {}})
    return path


# (kind, image_size) -> an exported .onnx from earlier in this process; export costs ~5-10 s CPU,
# so later calls copy the same files (the weights are seeded, so they are identical anyway).
_EXPORTED: dict[tuple[str, int], Path] = {}


def make_model(kind: str, out_dir: Path, image_size: int = 64) -> Path:
    """Initial-weights ``kind`` model exported to ``out_dir/<kind>.onnx`` (+ ``<kind>.json`` sidecar, ``<kind>.pt``)."""
    from kp_perception_training.export import export_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cached = _EXPORTED.get((kind, image_size))
    suffixes = (".onnx", ".json", ".pt")
    if cached is not None and all(cached.with_suffix(s).is_file() for s in suffixes):
        if cached.parent.resolve() != out_dir.resolve():
            for suffix in suffixes:
                shutil.copy2(cached.with_suffix(suffix), out_dir / f"{kind}{suffix}")
        return out_dir / f"{kind}.onnx"
    checkpoint = make_checkpoint(kind, out_dir, image_size)
    onnx_path = export_checkpoint(checkpoint, out_dir / f"{kind}.onnx").onnx_path
    _EXPORTED[(kind, image_size)] = onnx_path
    return onnx_path
