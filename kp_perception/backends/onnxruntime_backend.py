"""ONNX Runtime backend: the default, runs anywhere; CUDA / TensorRT execution providers when present.

The GPU providers get their options from the one ``EngineSettings``
(:func:`provider_options`): the TensorRT provider caches its engines on disk
(in a folder per precision, so fp16 and fp32 engines never mix) instead of
rebuilding them at every start. A GPU robot installs ``onnxruntime-gpu``
*instead of* ``onnxruntime`` (docs/robot_guide.md); the CPU package has neither
provider, and then the options are simply not used.

At load time the session's inputs and outputs are checked against the sidecar
(names, shapes, dtypes), so a model/sidecar mismatch is one clear
``ModelLoadError`` naming expected and found, never a shape error mid-stream.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kp_perception.backends.base import Backend
from kp_perception.backends.engine_settings import EngineSettings, ort_trt_cache_dir
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import Sidecar, TensorSpec, read_sidecar, sidecar_path

# Tried in this order, each only if this onnxruntime build has it.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

# onnxruntime type strings -> numpy dtype names used in the sidecar.
_ORT_TYPES = {
    "tensor(uint8)": "uint8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def provider_options(
    providers: list[str], model_path: str | Path, settings: EngineSettings, device_id: int = 0
) -> list[dict[str, Any]]:
    """One options dict per provider, in order, for ``InferenceSession(providers=..., provider_options=...)``.

    TensorRT provider: precision, engine cache on (folder :func:`ort_trt_cache_dir`, which names the
    precision), timing cache beside it, workspace. CUDA provider: device, exhaustive cuDNN conv search
    with its workspace allowed; it has no precision or engine cache of its own (it runs the graph's
    float32). Every other provider: no options. Values are strings, as ONNX Runtime parses them.
    """
    cache = ort_trt_cache_dir(model_path, settings)
    out: list[dict[str, Any]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            out.append({
                "device_id": str(device_id),
                "trt_fp16_enable": "True" if settings.fp16 else "False",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache),
                "trt_max_workspace_size": str(int(settings.workspace_size)),
            })
        elif name == "CUDAExecutionProvider":
            out.append({
                "device_id": str(device_id),
                "cudnn_conv_algo_search": "EXHAUSTIVE",
                "cudnn_conv_use_max_workspace": "1",
            })
        else:
            out.append({})
    return out


def prepare_trt_cache(model_path: str | Path, settings: EngineSettings) -> Path:
    """Create this precision's cache folder; with ``force_engine_update`` empty it first (this precision only)."""
    cache = ort_trt_cache_dir(model_path, settings)
    try:
        if settings.force_engine_update and cache.is_dir():
            shutil.rmtree(cache)
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"{cache}: cannot create the TensorRT engine cache folder ({exc.strerror or exc}); "
            "set engine_file_path to a writable place"
        ) from None
    return cache


def default_providers() -> list[str]:
    """The preferred providers this onnxruntime build actually has (CPU always last)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """An ``.onnx`` file plus its sidecar, run by an ``onnxruntime.InferenceSession``.

    Args:
        model_path: the ``.onnx`` file; its sidecar is the same path with ``.json``.
        providers: execution providers in priority order; default :func:`default_providers`.
        expected_kind: "pyramids" (any hierarchy kind) or "tusk"; a mismatch is a ``ModelLoadError``.
        threads: intra-op threads (0 = onnxruntime's default, one per core).
        engine: GPU engine settings passed to the TensorRT / CUDA providers (:func:`provider_options`).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        providers: list[str] | None = None,
        expected_kind: str | None = None,
        threads: int = 0,
        engine: EngineSettings | None = None,
    ) -> None:
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        providers = choose_providers(list(providers)) if providers else None
        self.sidecar = read_sidecar(sidecar_path(model_path), expected_kind)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # Gaussian heatmaps underflow into float32 denormals, which make x86 convs tens of times slower;
        # treating them as zero changes nothing measurable (they are < 1.2e-38).
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        self.providers = list(providers) if providers else default_providers()
        settings = engine or EngineSettings()
        self.provider_options = provider_options(self.providers, model_path, settings)
        if "TensorrtExecutionProvider" in self.providers:
            prepare_trt_cache(model_path, settings)
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=self.providers, provider_options=self.provider_options
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{model_path}: not a loadable ONNX model ({reason})") from None
        check_session(model_path, self.session, self.sidecar)
        self._output_names = list(self.sidecar.output_names)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, {self.sidecar.input_name: batch})
        return dict(zip(self._output_names, values, strict=True))


def check_session(model_path: str | Path, session, sidecar: Sidecar) -> None:
    """Compare the session's graph inputs/outputs with the sidecar's; raise naming expected and found."""
    found_inputs = tuple(_spec(arg) for arg in session.get_inputs())
    found_outputs = tuple(_spec(arg) for arg in session.get_outputs())
    check_specs(model_path, "inputs", sidecar.inputs, found_inputs)
    check_specs(model_path, "outputs", sidecar.outputs, found_outputs)


def check_specs(
    model_path: str | Path, what: str, expected: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...]
) -> None:
    """Names, dtypes and shapes must match; a symbolic dim matches any symbolic dim."""

    def normal(spec: TensorSpec) -> tuple:
        return spec.name, spec.dtype, tuple("?" if isinstance(d, str) else d for d in spec.shape)

    if [normal(s) for s in expected] != [normal(s) for s in found]:
        raise ModelLoadError(
            f"{model_path}: graph {what} do not match the sidecar: expected {_describe(expected)}, "
            f"found {_describe(found)}"
        )


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def _describe(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs) or "(none)"


def choose_providers(requested: list[str]) -> list[str]:
    """The requested execution providers this onnxruntime build can run, in order.

    A name onnxruntime does not know (a typo) is a ConfigError listing the known
    ones; a known provider this build or machine lacks (CUDA on a CPU build) is
    skipped with a warning, and CPU is the fallback when none is left.
    """
    import logging

    import onnxruntime as ort

    from kp_perception.errors import ConfigError

    known = ort.get_all_providers()
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ConfigError(
            f"unknown onnxruntime execution provider(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        fallback = "" if chosen else "; running on CPUExecutionProvider"
        logging.getLogger(__name__).warning(
            "onnxruntime execution provider(s) %s not available in this build%s", ", ".join(missing), fallback
        )
    return chosen or ["CPUExecutionProvider"]
