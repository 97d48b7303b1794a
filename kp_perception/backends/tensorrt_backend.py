"""TensorRT 10 backend: build an engine from the exported ONNX, cache it on disk, run it with pycuda.

NOTE: no part of this file that touches tensorrt or pycuda has run on a GPU yet
(there is none on the development machines); see ``docs/tensorrt.md``. The
parts that decide *what* to do — which engine file, the cache key, whether a
cached engine is stale, whether an existing engine may be overwritten, and
whether the engine's bindings match the sidecar — are pure functions, tested
without tensorrt installed.

Engine files name their precision: for ``model.onnx`` the engines are
``model.fp32.engine`` and ``model.fp16.engine`` (or the ``engine_file_path``
given), each with a key file ``<engine>.meta.json`` holding its
:class:`EngineKey` (sha256 of the ONNX file, ``tensorrt.__version__``, the GPU
name, the precision). An engine whose key does not match the current one
(other GPU, other TensorRT, changed ONNX) is rebuilt from the ONNX with a log
line, never loaded, because a foreign engine either fails to deserialise or
silently runs a stale graph. An engine of the *other* precision is never
rebuilt over: the wanted precision goes to its own file beside it
(:func:`plan_engine`), and :func:`build_engine` refuses to overwrite it.

tensorrt and pycuda are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kp_perception.atomic import atomic_write_bytes
from kp_perception.backends.base import Backend
from kp_perception.backends.engine_settings import (
    DEFAULT_WORKSPACE_BYTES,
    EngineSettings,
    precision_tag,
    strip_precision,
    with_precision,
)
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import Sidecar, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WORKSPACE_BYTES", "EngineKey", "EnginePlan", "TensorRTBackend", "plan_engine"]
MAX_DYNAMIC_BATCH = 8
ENGINE_SUFFIXES = (".engine", ".plan")


# ---------------------------------------------------------------- pure parts (tested without a GPU)


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built from and for; any difference means rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str  # "fp32" | "fp16"

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Binding:
    """One engine I/O tensor as TensorRT reports it; -1 marks a dynamic dimension."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def meta_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.meta.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".meta.json")


def stale_reason(engine_path: str | Path, expected: EngineKey) -> str | None:
    """Why the engine at ``engine_path`` must not be loaded for ``expected``, or None if it is current."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return f"no engine at {engine_path}"
    meta = meta_path(engine_path)
    try:
        found = _key_from_json(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no key file {meta.name} next to the engine"
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable key file {meta.name} ({exc})"
    diffs = [
        f"{field} {getattr(found, field)!r} -> {getattr(expected, field)!r}"
        for field in ("onnx_sha256", "tensorrt_version", "gpu_name", "precision")
        if getattr(found, field) != getattr(expected, field)
    ]
    return "built for another setup: " + ", ".join(diffs) if diffs else None


def write_meta(engine_path: str | Path, key: EngineKey) -> None:
    atomic_write_bytes(meta_path(engine_path), (json.dumps(asdict(key), indent=2) + "\n").encode("utf-8"))


def _key_from_json(text: str) -> EngineKey:
    """An EngineKey from its key file; key files written before precision existed say ``"fp16": bool``."""
    data = json.loads(text)
    if isinstance(data, dict) and "precision" not in data and isinstance(data.get("fp16"), bool):
        data["precision"] = "fp16" if data.pop("fp16") else "fp32"
    return EngineKey(**data)


def read_key(engine_path: str | Path) -> EngineKey | None:
    """The key recorded beside an engine, or None when there is none (or it cannot be read)."""
    try:
        return _key_from_json(meta_path(engine_path).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class EnginePlan:
    """Which engine a load uses: built from ``onnx_path`` (None: no ONNX to rebuild from) at ``engine_path``.

    ``note`` is a line for the log when the plan differs from what was asked (another precision's
    engine was found and left alone).
    """

    onnx_path: Path | None
    engine_path: Path
    precision: str
    note: str = ""


def onnx_for_engine(engine_path: str | Path) -> Path:
    """The ONNX an engine is built from: ``model.fp16.engine`` and ``model.engine`` -> ``model.onnx``."""
    return strip_precision(engine_path).with_suffix(".onnx")


def plan_engine(model_path: str | Path, settings: EngineSettings) -> EnginePlan:
    """Decide, from file names and key files only, which engine file serves ``model_path`` at ``settings``.

    - ``model.onnx`` with no ``engine_file_path``: ``model.<precision>.engine``.
    - an explicit engine (``engine_file_path``, or ``model_path`` itself a ``.engine``/``.plan``):
      that file, unless its key records the other precision: then the same name with the wanted
      precision (``model.fp16.engine`` beside an fp32 ``model.engine``), which is left untouched.
    - an engine whose *name* states the other precision is a contradiction: ``ModelLoadError``.
    - no ONNX to build from and an engine of the other precision: ``ModelLoadError``.
    """
    model_path = Path(model_path)
    precision = settings.precision
    if model_path.suffix.lower() == ".onnx":
        onnx_path: Path | None = model_path
        wanted = Path(settings.engine_file_path) if settings.engine_file_path else with_precision(
            model_path.with_suffix(".engine"), precision)
    else:
        wanted = Path(settings.engine_file_path) if settings.engine_file_path else model_path
        onnx_path = onnx_for_engine(wanted)
        if not onnx_path.is_file():
            onnx_path = onnx_for_engine(model_path) if onnx_for_engine(model_path).is_file() else None
    if onnx_path is not None and not onnx_path.is_file():
        onnx_path = None
    named = precision_tag(wanted)
    if named is not None and named != precision:
        raise ModelLoadError(
            f"{wanted}: the engine file name says {named}, but enable_fp16 is {settings.fp16} ({precision}); "
            f"set enable_fp16 to match or name another engine_file_path"
        )
    recorded = read_key(wanted)
    if recorded is None or recorded.precision == precision:
        return EnginePlan(onnx_path, wanted, precision)
    if onnx_path is None:
        raise ModelLoadError(
            f"{wanted}: this engine was built for {recorded.precision}, enable_fp16 asks for {precision}, and "
            f"there is no ONNX beside it to build a {precision} engine from"
        )
    other = with_precision(wanted, precision)
    note = (f"{wanted} holds a {recorded.precision} engine and {precision} was asked for: "
            f"using {other.name} instead ({wanted.name} is left as it is)")
    return EnginePlan(onnx_path, other, precision, note)


def check_overwrite(engine_path: str | Path, key: EngineKey) -> None:
    """Refuse to replace an engine of another precision: that would silently change what a user runs."""
    recorded = read_key(engine_path)
    if Path(engine_path).exists() and recorded is not None and recorded.precision != key.precision:
        raise ModelLoadError(
            f"{engine_path}: refusing to overwrite a {recorded.precision} engine with a {key.precision} one; "
            f"build into {with_precision(engine_path, key.precision)} (the default name) instead"
        )


def validate_bindings(source: str | Path, bindings: list[Binding], sidecar: Sidecar) -> None:
    """Engine I/O tensors must be exactly the sidecar's (names, direction, dtype, shape).

    A sidecar dim that is symbolic ("batch") matches -1 (dynamic) or any positive size.
    """
    expected = {s.name: (True, s) for s in sidecar.inputs} | {s.name: (False, s) for s in sidecar.outputs}
    found = {b.name: b for b in bindings}
    if set(expected) != set(found):
        raise ModelLoadError(
            f"{source}: engine tensors are {sorted(found)}, expected {sorted(expected)} (from the sidecar)"
        )
    for name, (is_input, spec) in expected.items():
        binding = found[name]
        shape_ok = len(binding.shape) == len(spec.shape) and all(
            (isinstance(want, str) and (got == -1 or got > 0)) or got == want
            for want, got in zip(spec.shape, binding.shape, strict=True)
        )
        if binding.is_input != is_input or binding.dtype != spec.dtype or not shape_ok:
            raise ModelLoadError(
                f"{source}: engine tensor {name!r} is "
                f"{'input' if binding.is_input else 'output'} {list(binding.shape)}:{binding.dtype}, expected "
                f"{'input' if is_input else 'output'} {list(spec.shape)}:{spec.dtype} (from the sidecar)"
            )


def concrete_shape(shape: tuple[int | str, ...], batch: int) -> tuple[int, ...]:
    """Sidecar shape with the symbolic batch dim replaced by ``batch``."""
    return tuple(batch if isinstance(d, str) else int(d) for d in shape)


# ---------------------------------------------------------------- tensorrt / pycuda (lazy imports)


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ModelLoadError(f"the tensorrt backend needs the tensorrt Python package ({exc})") from None
    return trt


def _cuda_driver():
    """pycuda.driver after cuInit, or a clear error when pycuda or a GPU is absent."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise ModelLoadError(f"the tensorrt backend needs pycuda ({exc})") from None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise ModelLoadError("the tensorrt backend needs a CUDA GPU; none found")
    except cuda.Error as exc:
        raise ModelLoadError(f"the tensorrt backend needs a CUDA GPU ({exc})") from None
    return cuda


def require_tensorrt_gpu() -> None:
    """Raise ``ModelLoadError`` unless tensorrt, pycuda and a CUDA GPU are all present."""
    _import_tensorrt()
    _cuda_driver()


def current_key(onnx_path: str | Path, precision: str, device: int = 0) -> EngineKey:
    """The key an engine for ``onnx_path`` must have on this machine (imports tensorrt and pycuda)."""
    trt = _import_tensorrt()
    cuda = _cuda_driver()
    return EngineKey(file_sha256(onnx_path), trt.__version__, cuda.Device(device).name(), precision)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    sidecar: Sidecar,
    key: EngineKey,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Parse the ONNX with OnnxParser, build a serialised engine at ``key.precision``, write it and its key.

    An existing engine of another precision at ``engine_path`` is never overwritten (:func:`check_overwrite`).
    """
    check_overwrite(engine_path, key)
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{onnx_path}: TensorRT could not parse the ONNX ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if key.precision == "fp16":
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building with fp16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if sidecar.dynamic_batch:
        profile = builder.create_optimization_profile()
        spec = sidecar.inputs[0]
        profile.set_shape(
            spec.name,
            concrete_shape(spec.shape, 1),
            concrete_shape(spec.shape, 1),
            concrete_shape(spec.shape, MAX_DYNAMIC_BATCH),
        )
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, bytes(serialized))
    write_meta(engine_path, key)
    return engine_path


def ensure_engine(plan: EnginePlan, sidecar: Sidecar, settings: EngineSettings, device: int = 0) -> Path:
    """Return a current engine at ``plan.engine_path``, building it from ``plan.onnx_path`` when needed.

    Built when missing or stale, or always with ``force_engine_update``; never over another precision.
    """
    if plan.note:
        log.warning(plan.note)
    engine_path = plan.engine_path
    if plan.onnx_path is None:
        # No ONNX to rebuild from: the engine must already match this TensorRT and GPU.
        trt = _import_tensorrt()
        cuda = _cuda_driver()
        recorded = read_key(engine_path)
        key = EngineKey(recorded.onnx_sha256 if recorded else "", trt.__version__, cuda.Device(device).name(),
                        plan.precision)
        reason = stale_reason(engine_path, key)
        if reason:
            raise ModelLoadError(f"{engine_path}: cannot use this engine ({reason}) and no ONNX to rebuild from")
        return engine_path
    key = current_key(plan.onnx_path, plan.precision, device)
    reason = "force_engine_update is set" if settings.force_engine_update else stale_reason(engine_path, key)
    if reason:
        log.warning("building TensorRT engine %s (%s) from %s: %s", engine_path, plan.precision, plan.onnx_path,
                    reason)
        build_engine(plan.onnx_path, engine_path, sidecar, key, settings.workspace_size)
    return engine_path


def build_engine_for_onnx(onnx_path: str | Path, settings: EngineSettings) -> Path:
    """Export's ``--engine``: build (or reuse a current) engine for an exported ONNX + sidecar; returns its path."""
    sidecar = read_sidecar(sidecar_path(onnx_path))
    plan = plan_engine(onnx_path, settings)
    return ensure_engine(plan, sidecar, settings)


def engine_sidecar(model_path: Path, engine_path: Path) -> Path:
    """The sidecar of an engine load: the model's own, else the engine's, else its ONNX's (same stem)."""
    for candidate in (sidecar_path(model_path), sidecar_path(engine_path), sidecar_path(onnx_for_engine(engine_path))):
        if candidate.is_file():
            return candidate
    return sidecar_path(model_path)


class TensorRTBackend(Backend):
    """A TensorRT engine run with named I/O tensors, pycuda buffers and one CUDA stream.

    ``model_path`` is an ``.onnx`` (engine cached beside it as ``model.<precision>.engine``,
    or at ``engine.engine_file_path``) or an ``.engine``/``.plan`` (rebuilt from the ``.onnx`` of
    the same stem when stale); :func:`plan_engine` decides which file.
    The CUDA primary context is pushed around every call, so any thread may call
    :meth:`run` (ROS executors do).
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        expected_kind: str | None = None,
        engine: EngineSettings | None = None,
        device: int = 0,
    ) -> None:
        model_path = Path(model_path)
        settings = engine or EngineSettings()
        if model_path.suffix.lower() == ".onnx" and not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        plan = plan_engine(model_path, settings)
        if plan.onnx_path is None and not plan.engine_path.is_file():
            raise ModelLoadError(f"{plan.engine_path}: engine not found and no {onnx_for_engine(plan.engine_path).name} "
                                 "to build it from")
        engine_path = plan.engine_path
        self.sidecar = read_sidecar(engine_sidecar(model_path, engine_path), expected_kind)
        self.engine_path = engine_path
        trt = _import_tensorrt()
        cuda = _cuda_driver()
        ensure_engine(plan, self.sidecar, settings, device)

        self._cuda = cuda
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self._engine is None:
                raise ModelLoadError(f"{engine_path}: TensorRT could not deserialise the engine")
            bindings = []
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                bindings.append(Binding(
                    name,
                    self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    tuple(self._engine.get_tensor_shape(name)),
                    np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name,
                ))
            validate_bindings(engine_path, bindings, self.sidecar)
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._input_name = self.sidecar.input_name
            batch_shape = concrete_shape(self.sidecar.inputs[0].shape, 1)
            self._context.set_input_shape(self._input_name, batch_shape)
            self._host: dict[str, np.ndarray] = {}
            self._device = {}
            for binding in bindings:
                shape = tuple(self._context.get_tensor_shape(binding.name))
                host = cuda.pagelocked_empty(shape, np.dtype(binding.dtype))
                self._host[binding.name] = host
                self._device[binding.name] = cuda.mem_alloc(max(host.nbytes, 1))
                self._context.set_tensor_address(binding.name, int(self._device[binding.name]))
        finally:
            self._ctx.pop()
        self._output_names = list(self.sidecar.output_names)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cuda = self._cuda
        host_in = self._host[self._input_name]
        if batch.shape != host_in.shape:
            raise ModelLoadError(f"tensorrt backend runs batch shape {host_in.shape}, got {batch.shape}")
        self._ctx.push()
        try:
            np.copyto(host_in, batch)
            cuda.memcpy_htod_async(self._device[self._input_name], host_in, self._stream)
            if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            for name in self._output_names:
                cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return {name: self._host[name].copy() for name in self._output_names}
