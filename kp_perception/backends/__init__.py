"""Inference backends behind one interface (``base.Backend``); each imports its library only when chosen.

``load_backend`` picks the backend from the ``backend`` argument or the model
file's extension: ``.onnx`` -> onnxruntime, ``.engine``/``.plan`` -> tensorrt,
``.pt`` -> torch. Importing this package imports none of onnxruntime, torch,
tensorrt or pycuda.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kp_perception.errors import ModelLoadError

if TYPE_CHECKING:
    from kp_perception.backends.base import Backend
    from kp_perception.backends.engine_settings import EngineSettings

BACKENDS = ("onnxruntime", "tensorrt", "torch")
_BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch"}


def backend_for(model_path: str | Path, backend: str | None = None) -> str:
    """The backend name for ``model_path``: ``backend`` if given, else from the extension."""
    if backend:
        if backend not in BACKENDS:
            raise ModelLoadError(f"unknown backend {backend!r}, expected one of {', '.join(BACKENDS)}")
        return backend
    suffix = Path(model_path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise ModelLoadError(
            f"{model_path}: cannot choose a backend from extension {suffix!r}, "
            f"expected one of {', '.join(_BY_SUFFIX)} or an explicit backend"
        )
    return _BY_SUFFIX[suffix]


def load_backend(
    model_path: str | Path,
    backend: str | None = None,
    providers: list[str] | None = None,
    expected_kind: str | None = None,
    threads: int = 0,
    engine: EngineSettings | None = None,
) -> Backend:
    """Load ``model_path`` with the chosen backend; every load problem is a ``ModelLoadError``.

    Args:
        backend: "onnxruntime", "tensorrt" or "torch"; None = by extension.
        providers: onnxruntime execution providers (default: TensorRT/CUDA EPs when present, then CPU).
        expected_kind: "pyramids" (any of pyramids/keynet/transporter) or "tusk".
        threads: CPU threads for onnxruntime/torch (0 = library default).
        engine: GPU engine settings (engine file, fp16, forced rebuild, workspace) for the tensorrt
            backend and onnxruntime's TensorRT / CUDA providers; None = the defaults (fp32).
    """
    name = backend_for(model_path, backend)
    if name == "onnxruntime":
        from kp_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            model_path, providers=providers, expected_kind=expected_kind, threads=threads, engine=engine
        )
    if name == "tensorrt":
        from kp_perception.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, expected_kind=expected_kind, engine=engine)
    from kp_perception.backends.torch_backend import TorchBackend

    return TorchBackend(model_path, expected_kind=expected_kind, threads=threads or None)
