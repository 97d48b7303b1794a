"""How a GPU engine is built and cached: one typed settings object for every GPU path.

Why one object: the same four choices (where the engine lives, fp16 or fp32,
rebuild even when current, builder workspace) steer the tensorrt backend's own
engine (``tensorrt_backend.py``) and ONNX Runtime's TensorRT / CUDA execution
providers (``onnxruntime_backend.provider_options``). The nodes fill it from
their ROS parameters (``kp_perception.nodes.engine_params``, named as Isaac ROS
names them), ``kp-perception export --engine --fp16`` from its flags.

Precision is part of every engine's name and cache key, so an fp16 engine and
an fp32 engine of the same model sit side by side (``model.fp16.engine``,
``model.fp32.engine``) and one is never silently rebuilt over the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kp_perception.errors import ConfigError

DEFAULT_WORKSPACE_BYTES = 1 << 30
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class EngineSettings:
    """What to build or load on a GPU; the defaults are what a node without engine parameters does.

    Attributes:
        engine_file_path: TensorRT engine file; "" = beside the ONNX, named by precision
            (``model.fp16.engine``). For ONNX Runtime's TensorRT provider it names the cache
            folder instead (``<engine stem>.ort_trt_cache/<precision>/``).
        fp16: let TensorRT use fp16 kernels (the tensorrt backend and ORT's TensorRT provider).
        force_engine_update: rebuild the engine (or clear ORT's engine cache) even when it is current.
        workspace_size: TensorRT builder workspace limit in bytes.
    """

    engine_file_path: str = ""
    fp16: bool = False
    force_engine_update: bool = False
    workspace_size: int = DEFAULT_WORKSPACE_BYTES

    def __post_init__(self) -> None:
        if int(self.workspace_size) <= 0:
            raise ConfigError(f"workspace_size is {self.workspace_size}; expected a positive number of bytes")

    @property
    def precision(self) -> str:
        """"fp16" or "fp32": the word used in engine names, cache keys and cache folders."""
        return "fp16" if self.fp16 else "fp32"


def precision_tag(path: str | Path) -> str | None:
    """The precision a file name states (``model.fp16.engine`` -> "fp16"), or None when it names none."""
    suffixes = Path(path).suffixes
    if len(suffixes) >= 2 and suffixes[-2].lstrip(".") in PRECISIONS:
        return suffixes[-2].lstrip(".")
    return None


def strip_precision(path: str | Path) -> Path:
    """``model.fp16.engine`` -> ``model.engine``; a name without a precision tag is returned as is."""
    path = Path(path)
    tag = precision_tag(path)
    if tag is None:
        return path
    return path.with_name(path.name[: -len(f".{tag}{path.suffix}")] + path.suffix)


def with_precision(path: str | Path, precision: str) -> Path:
    """``model.engine`` / ``model.fp32.engine`` -> ``model.<precision>.engine``."""
    base = strip_precision(path)
    return base.with_name(f"{base.stem}.{precision}{base.suffix}")


def ort_trt_cache_dir(model_path: str | Path, settings: EngineSettings) -> Path:
    """The folder ORT's TensorRT provider caches engines in, one per precision.

    ORT's own cache does not key on precision (its docs: changing precision
    needs a rebuild), so fp16 and fp32 engines get separate folders and can
    never be mistaken for each other.
    """
    anchor = strip_precision(settings.engine_file_path) if settings.engine_file_path else Path(model_path)
    return anchor.with_name(f"{anchor.stem}.ort_trt_cache") / settings.precision
