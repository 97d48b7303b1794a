"""The torch backend: run a training checkpoint directly (for debugging and parity checks).

It also holds :class:`InferenceGraph`, the one module that turns an encoder into
the exported graph (uint8 NHWC in, model-pixel outputs named as in
``kp_perception.sidecar``). ``training/export.py`` exports exactly this module,
so the torch backend and the ONNX file compute the same thing and parity
tests compare like with like. This module imports torch at import time; it is
only imported when the torch backend is chosen (or by export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kp_perception.backends.base import Backend
from kp_perception.checkpoint import load_checkpoint
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import HIERARCHY_KINDS, Sidecar, check_kind, make_sidecar


class InferenceGraph(nn.Module):
    """Encoder + in-graph pre/post-processing, the exact module exported to ONNX.

    Input ``image``: B×H×W×3 uint8 RGB. Inside: NHWC -> NCHW float32 / 255,
    ``encoder.infer``, keypoints (x, y) in [-1, 1] (align_corners) -> model-input
    pixels ``(k + 1) / 2 * (size - 1)``.

    Outputs (tuple, in sidecar order):
      pyramids kinds: keypoints B×N×2 float32 px, scores B×N, parents N int32, levels N int32;
      tusk: keypoints B×K×2 px, scores B×K, descriptors B×K×C, prototype_ids B×K int32, distances B×K.

    Integer outputs are int32 (native everywhere in TensorRT). ``parents`` and
    ``levels`` are constants tied to the input by a no-op add (buffers named apart from the outputs), because a
    graph output that is a bare initializer is rejected by some runtimes.
    """

    def __init__(self, encoder: nn.Module, kind: str, width: int, height: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.register_buffer("half_extent", torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0]))
        if kind in HIERARCHY_KINDS:
            parents = torch.tensor(list(encoder.parents), dtype=torch.int32)
            levels = torch.tensor(
                [lvl for lvl, size in enumerate(encoder.level_sizes) for _ in range(size)], dtype=torch.int32
            )
            self.register_buffer("parent_table", parents)
            self.register_buffer("level_table", levels)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        images = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        out = self.encoder.infer(images)
        keypoints = (out["keypoints"] + 1.0) * self.half_extent
        scores = out["scores"]
        if self.kind in HIERARCHY_KINDS:
            zero = (scores[0] > 2.0).to(torch.int32)  # always 0, but data-dependent so not folded away
            return keypoints, scores, self.parent_table + zero, self.level_table + zero
        return (
            keypoints,
            scores,
            out["descriptors"],
            out["prototype_ids"].to(torch.int32),
            out["distances"],
        )


def input_size_from_config(config: dict[str, Any], source: str | Path = "checkpoint") -> tuple[int, int]:
    """Training resolution ``config["data"]["image_size"]`` (int = square, or [w, h]) -> (width, height)."""
    size = (config.get("data") or {}).get("image_size")
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ModelLoadError(f"{source}: config data.image_size is {size!r}, expected an int or [width, height]")


def describe(
    graph: InferenceGraph,
    width: int,
    height: int,
    config: dict[str, Any] | None = None,
    opset: int = 0,
    dynamic_batch: bool = False,
) -> Sidecar:
    """The sidecar of ``graph``: output sizes are read off one forward pass, not assumed."""
    encoder = graph.encoder
    with torch.inference_mode():
        outputs = graph(torch.zeros(1, height, width, 3, dtype=torch.uint8))
    if graph.kind in HIERARCHY_KINDS:
        return make_sidecar(
            graph.kind, width, height,
            level_sizes=tuple(encoder.level_sizes), parents=tuple(encoder.parents),
            config=config, opset=opset, dynamic_batch=dynamic_batch,
        )
    return make_sidecar(
        graph.kind, width, height,
        num_keypoints=int(outputs[0].shape[1]), num_prototypes=int(encoder.num_prototypes),
        descriptor_dim=int(outputs[2].shape[2]), config=config, opset=opset, dynamic_batch=dynamic_batch,
    )


def graph_from_checkpoint(
    checkpoint: dict[str, Any], image_size: tuple[int, int] | None = None, source: str | Path = "checkpoint"
) -> tuple[InferenceGraph, int, int]:
    """Checkpoint dict -> (eval-mode InferenceGraph, width, height); size defaults to the training size."""
    from kp_perception.models import build_encoder

    kind = checkpoint["kind"]
    config = checkpoint["config"]
    try:
        encoder = build_encoder(kind, config.get("model") or {})
        encoder.load_state_dict(checkpoint["encoder"])
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{source}: encoder weights do not match config model ({first})") from None
    width, height = image_size or input_size_from_config(config, source)
    return InferenceGraph(encoder, kind, width, height).eval(), width, height


class TorchBackend(Backend):
    """Eager torch on CPU from a ``.pt`` training checkpoint (no ONNX, no sidecar file needed)."""

    name = "torch"

    def __init__(self, model_path: str | Path, expected_kind: str | None = None, threads: int | None = None) -> None:
        checkpoint = load_checkpoint(model_path)
        check_kind(model_path, checkpoint["kind"], expected_kind)
        if threads:
            torch.set_num_threads(int(threads))
        self.graph, width, height = graph_from_checkpoint(checkpoint, source=model_path)
        self.sidecar = describe(self.graph, width, height, config=checkpoint["config"])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.graph(torch.from_numpy(np.ascontiguousarray(batch)))
        return {name: t.numpy() for name, t in zip(self.sidecar.output_names, outputs, strict=True)}
