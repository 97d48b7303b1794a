"""TensorRT 10 backend: build an engine from the exported ONNX, cache it on disk, run it with pycuda.

NOTE: no part of this file that touches tensorrt or pycuda has run on a GPU yet
(there is none on the development machines); see ``docs/tensorrt.md``. The
parts that decide *what* to do — the cache key, whether a cached engine is
stale, and whether the engine's bindings match the sidecar — are pure
functions, tested without tensorrt installed.

Engine cache: the engine ``model.engine`` sits next to a metadata file
``model.engine.meta.json`` holding its :class:`EngineKey` (sha256 of the ONNX
file, ``tensorrt.__version__``, the GPU name, fp16). An engine whose key does
not match the current one (other GPU, other TensorRT, changed ONNX, other
precision) is rebuilt from the ONNX with a log line, never loaded, because a
foreign engine either fails to deserialise or silently runs a stale graph.

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
from kp_perception.errors import ModelLoadError
from kp_perception.sidecar import Sidecar, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 1 << 30
MAX_DYNAMIC_BATCH = 8


# ---------------------------------------------------------------- pure parts (tested without a GPU)


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built from and for; any difference means rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    fp16: bool

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
        found = EngineKey(**json.loads(meta.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return f"no key file {meta.name} next to the engine"
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable key file {meta.name} ({exc})"
    diffs = [
        f"{field} {getattr(found, field)!r} -> {getattr(expected, field)!r}"
        for field in ("onnx_sha256", "tensorrt_version", "gpu_name", "fp16")
        if getattr(found, field) != getattr(expected, field)
    ]
    return "built for another setup: " + ", ".join(diffs) if diffs else None


def write_meta(engine_path: str | Path, key: EngineKey) -> None:
    atomic_write_bytes(meta_path(engine_path), (json.dumps(asdict(key), indent=2) + "\n").encode("utf-8"))


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


def current_key(onnx_path: str | Path, fp16: bool, device: int = 0) -> EngineKey:
    """The key an engine for ``onnx_path`` must have on this machine (imports tensorrt and pycuda)."""
    trt = _import_tensorrt()
    cuda = _cuda_driver()
    return EngineKey(file_sha256(onnx_path), trt.__version__, cuda.Device(device).name(), bool(fp16))


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    sidecar: Sidecar,
    key: EngineKey,
    fp16: bool = False,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Parse the ONNX with OnnxParser, build a serialised engine (FP16 optional), write it and its key."""
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
    if fp16:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building with --fp16 anyway")
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


def ensure_engine(
    onnx_path: str | Path | None,
    engine_path: str | Path,
    sidecar: Sidecar,
    fp16: bool = False,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Return a current engine at ``engine_path``, building or rebuilding it from ``onnx_path`` if needed."""
    engine_path = Path(engine_path)
    if onnx_path is None or not Path(onnx_path).is_file():
        # No ONNX to rebuild from: the engine must already match this TensorRT and GPU.
        trt = _import_tensorrt()
        cuda = _cuda_driver()
        recorded = _read_key(engine_path)
        key = EngineKey(recorded.onnx_sha256 if recorded else "", trt.__version__, cuda.Device(0).name(),
                        recorded.fp16 if recorded else fp16)
        reason = stale_reason(engine_path, key)
        if reason:
            raise ModelLoadError(f"{engine_path}: cannot use this engine ({reason}) and no ONNX to rebuild from")
        return engine_path
    key = current_key(onnx_path, fp16)
    reason = stale_reason(engine_path, key)
    if reason:
        log.warning("building TensorRT engine %s from %s: %s", engine_path, onnx_path, reason)
        build_engine(onnx_path, engine_path, sidecar, key, fp16, workspace_bytes)
    return engine_path


def _read_key(engine_path: Path) -> EngineKey | None:
    try:
        return EngineKey(**json.loads(meta_path(engine_path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def build_engine_for_onnx(onnx_path: str | Path, engine_path: str | Path, fp16: bool = False) -> Path:
    """Export's ``--engine``: build (or reuse a current) engine for an exported ONNX + sidecar."""
    sidecar = read_sidecar(sidecar_path(onnx_path))
    return ensure_engine(onnx_path, engine_path, sidecar, fp16)


class TensorRTBackend(Backend):
    """A TensorRT engine run with named I/O tensors, pycuda buffers and one CUDA stream.

    ``model_path`` is an ``.onnx`` (engine cached beside it as ``.engine``) or an
    ``.engine``/``.plan`` (rebuilt from the ``.onnx`` of the same stem when stale).
    The CUDA primary context is pushed around every call, so any thread may call
    :meth:`run` (ROS executors do).
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        expected_kind: str | None = None,
        fp16: bool = False,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        device: int = 0,
    ) -> None:
        model_path = Path(model_path)
        if model_path.suffix == ".onnx":
            onnx_path, engine_path = model_path, model_path.with_suffix(".engine")
            if not onnx_path.is_file():
                raise ModelLoadError(f"{onnx_path}: model file not found")
        else:
            onnx_path, engine_path = model_path.with_suffix(".onnx"), model_path
            if not engine_path.is_file() and not onnx_path.is_file():
                raise ModelLoadError(f"{engine_path}: engine not found and no {onnx_path.name} to build it from")
        self.sidecar = read_sidecar(sidecar_path(model_path), expected_kind)
        trt = _import_tensorrt()
        cuda = _cuda_driver()
        ensure_engine(onnx_path, engine_path, self.sidecar, fp16, workspace_bytes)

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
