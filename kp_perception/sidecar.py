"""The sidecar JSON that travels with every exported model (``model.onnx`` -> ``model.json``).

Why: a robot must know, without torch or the training config, what the graph
expects (size, colour order, dtype, layout), what it returns (names, shapes,
dtypes) and how to read it (hierarchy, prototype count). Every backend reads
it with :func:`read_sidecar` and checks its model against it at load time, so
a wrong or stale file fails with one line naming expected and found values
instead of a shape error at the first frame.

The graph contract the sidecar describes (written by ``training/export.py``):

* input ``image``: B×H×W×3 uint8 RGB (NHWC); the graph divides by 255 itself.
* pyramid kinds (family "pyramid" in ``kp_perception.kinds``: pyramids, keynet,
  transporter): ``keypoints`` B×N×2 float32
  (x, y) in model-input pixels, ``scores`` B×N float32 in [0, 1], ``parents``
  N int32 (-1 for roots), ``levels`` N int32 (0 = coarsest).
* detection kinds (tusk): ``keypoints`` B×K×2 float32 px, ``scores`` B×K float32, ``descriptors``
  B×K×C float32 (L2-normalised), ``prototype_ids`` B×K int32, ``distances``
  B×K float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kp_perception.atomic import atomic_write_text
from kp_perception.errors import ModelLoadError
from kp_perception.kinds import KIND_NAMES, PYRAMID_KINDS

FORMAT = "kp_perception.sidecar"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8")  # of an exported ONNX graph (fp16 exists only inside TensorRT engines)
HIERARCHY_KINDS = PYRAMID_KINDS  # kinds whose graph returns a keypoint hierarchy
KINDS = KIND_NAMES
INPUT_NAME = "image"
NORMALISATION = "float32 = uint8 / 255, inside the graph; no mean/std"

Dim = int | str  # a fixed size, or a symbolic name for a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input/output: ``shape`` entries are ints or a symbolic name ("batch")."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "uint8", "float32", "int32"


@dataclass(frozen=True)
class Sidecar:
    """Everything a backend needs to know about an exported model, and nothing torch-specific."""

    kind: str
    input_width: int
    input_height: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    level_sizes: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    num_prototypes: int = 0
    descriptor_dim: int = 0
    config_sha256: str = ""
    project_version: str = ""
    opset: int = 0
    dynamic_batch: bool = False
    precision: str = "fp32"  # of the graph's weights/activations: "fp32", or "int8" (QDQ, kp-perception export --int8)
    colour_order: str = "RGB"
    dtype: str = "uint8"
    layout: str = "NHWC"
    normalisation: str = NORMALISATION
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> tuple[int, ...]:
        """Level index per keypoint (0 = coarsest), derived from ``level_sizes``."""
        return tuple(level for level, size in enumerate(self.level_sizes) for _ in range(size))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inputs"] = [_spec_to_dict(s) for s in self.inputs]
        data["outputs"] = [_spec_to_dict(s) for s in self.outputs]
        data["levels"] = len(self.level_sizes)
        return data


def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar of ``model.onnx`` / ``model.engine`` / ``model.pt`` is ``model.json``."""
    return Path(model_path).with_suffix(".json")


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a training config."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_sidecar(
    kind: str,
    input_width: int,
    input_height: int,
    *,
    level_sizes: tuple[int, ...] = (),
    parents: tuple[int, ...] = (),
    num_keypoints: int = 0,
    num_prototypes: int = 0,
    descriptor_dim: int = 0,
    config: dict[str, Any] | None = None,
    opset: int = 0,
    dynamic_batch: bool = False,
) -> Sidecar:
    """Build the sidecar for a model of ``kind``; output specs follow the graph contract above.

    For hierarchy kinds N = sum(level_sizes); for tusk ``num_keypoints`` is K.
    """
    from kp_perception import __version__

    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}, expected one of {', '.join(KINDS)}")
    batch: Dim = "batch" if dynamic_batch else 1
    inputs = (TensorSpec(INPUT_NAME, (batch, input_height, input_width, 3), "uint8"),)
    if kind in HIERARCHY_KINDS:
        n = int(sum(level_sizes))
        if len(parents) != n:
            raise ModelLoadError(f"parents has {len(parents)} entries, expected {n} (sum of level_sizes)")
        outputs = (
            TensorSpec("keypoints", (batch, n, 2), "float32"),
            TensorSpec("scores", (batch, n), "float32"),
            TensorSpec("parents", (n,), "int32"),
            TensorSpec("levels", (n,), "int32"),
        )
    else:
        k = int(num_keypoints)
        outputs = (
            TensorSpec("keypoints", (batch, k, 2), "float32"),
            TensorSpec("scores", (batch, k), "float32"),
            TensorSpec("descriptors", (batch, k, int(descriptor_dim)), "float32"),
            TensorSpec("prototype_ids", (batch, k), "int32"),
            TensorSpec("distances", (batch, k), "float32"),
        )
    return Sidecar(
        kind=kind,
        input_width=int(input_width),
        input_height=int(input_height),
        inputs=inputs,
        outputs=outputs,
        level_sizes=tuple(int(s) for s in level_sizes),
        parents=tuple(int(p) for p in parents),
        num_prototypes=int(num_prototypes),
        descriptor_dim=int(descriptor_dim),
        config_sha256=config_sha256(config) if config is not None else "",
        project_version=__version__,
        opset=int(opset),
        dynamic_batch=bool(dynamic_batch),
    )


def write_sidecar(path: str | Path, sidecar: Sidecar) -> None:
    """Write ``sidecar`` as JSON atomically (temporary file in the same folder, then rename)."""
    atomic_write_text(path, json.dumps(sidecar.to_dict(), indent=2) + "\n")


def read_sidecar(path: str | Path, expected_kind: str | None = None) -> Sidecar:
    """Read and validate a sidecar; every problem is a ``ModelLoadError`` naming expected and found.

    ``expected_kind`` "pyramids" accepts any kind of the pyramid family (what ``pyramids_node`` serves).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: sidecar JSON not found (expected next to the model, same stem)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: sidecar must be a JSON object, found {type(data).__name__}")
    _expect(path, "format", data.get("format"), FORMAT)
    _expect(path, "format_version", data.get("format_version"), FORMAT_VERSION)
    kind = data.get("kind")
    if kind not in KINDS:
        raise ModelLoadError(f"{path}: model kind is {kind!r}, expected one of {', '.join(KINDS)}")
    check_kind(path, kind, expected_kind)
    _expect(path, "colour_order", data.get("colour_order"), "RGB")
    _expect(path, "dtype", data.get("dtype"), "uint8")
    _expect(path, "layout", data.get("layout"), "NHWC")
    try:
        sidecar = Sidecar(
            kind=kind,
            input_width=int(data["input_width"]),
            input_height=int(data["input_height"]),
            inputs=tuple(_spec_from_dict(s) for s in data["inputs"]),
            outputs=tuple(_spec_from_dict(s) for s in data["outputs"]),
            level_sizes=tuple(int(s) for s in data.get("level_sizes", ())),
            parents=tuple(int(p) for p in data.get("parents", ())),
            num_prototypes=int(data.get("num_prototypes", 0)),
            descriptor_dim=int(data.get("descriptor_dim", 0)),
            config_sha256=str(data.get("config_sha256", "")),
            project_version=str(data.get("project_version", "")),
            opset=int(data.get("opset", 0)),
            dynamic_batch=bool(data.get("dynamic_batch", False)),
            precision=str(data.get("precision", "fp32")),
            normalisation=str(data.get("normalisation", NORMALISATION)),
            extra=dict(data.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: sidecar field missing or malformed ({type(exc).__name__}: {exc})") from None
    _validate(path, sidecar)
    return sidecar


def check_kind(path: str | Path, kind: str, expected_kind: str | None) -> None:
    """Raise if ``kind`` does not satisfy ``expected_kind`` ("pyramids" = any hierarchy kind)."""
    if expected_kind is None:
        return
    allowed = HIERARCHY_KINDS if expected_kind == "pyramids" else (expected_kind,)
    if kind not in allowed:
        raise ModelLoadError(
            f"{path}: model kind is {kind!r}, expected {expected_kind!r}"
            + (f" (or {'/'.join(k for k in HIERARCHY_KINDS if k != 'pyramids')})" if expected_kind == "pyramids" else "")
        )


def _expect(path: Path, key: str, found: Any, expected: Any) -> None:
    if found != expected:
        raise ModelLoadError(f"{path}: sidecar {key} is {found!r}, expected {expected!r}")


def _spec_from_dict(data: dict[str, Any]) -> TensorSpec:
    shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
    return TensorSpec(str(data["name"]), shape, str(data["dtype"]))


def _validate(path: Path, sidecar: Sidecar) -> None:
    """Cross-check the fields against the graph contract for the sidecar's kind."""
    if sidecar.precision not in PRECISIONS:
        raise ModelLoadError(f"{path}: sidecar precision is {sidecar.precision!r}, expected one of {', '.join(PRECISIONS)}")
    if sidecar.input_width <= 0 or sidecar.input_height <= 0:
        raise ModelLoadError(
            f"{path}: input size {sidecar.input_width}x{sidecar.input_height}, expected positive"
        )
    num_keypoints = _num_keypoints(sidecar)
    if num_keypoints < 0:
        raise ModelLoadError(f"{path}: sidecar has no B×K×2 'keypoints' output")
    try:
        expected = make_sidecar(
            sidecar.kind,
            sidecar.input_width,
            sidecar.input_height,
            level_sizes=sidecar.level_sizes,
            parents=sidecar.parents if sidecar.kind in HIERARCHY_KINDS else (),
            num_keypoints=num_keypoints,
            num_prototypes=sidecar.num_prototypes,
            descriptor_dim=sidecar.descriptor_dim,
            dynamic_batch=sidecar.dynamic_batch,
        )
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    for what in ("inputs", "outputs"):
        found_specs, expected_specs = getattr(sidecar, what), getattr(expected, what)
        if found_specs != expected_specs:
            raise ModelLoadError(
                f"{path}: sidecar {what} are {_describe(found_specs)}, "
                f"expected {_describe(expected_specs)} for kind {sidecar.kind!r}"
            )
    if sidecar.kind in HIERARCHY_KINDS:
        n = sum(sidecar.level_sizes)
        bad = [p for p in sidecar.parents if not -1 <= p < n]
        if bad:
            raise ModelLoadError(f"{path}: parent indices {bad[:5]} outside [-1, {n - 1}]")
    elif sidecar.num_prototypes <= 0:
        raise ModelLoadError(f"{path}: num_prototypes is {sidecar.num_prototypes}, expected > 0 for tusk")


def _num_keypoints(sidecar: Sidecar) -> int:
    for spec in sidecar.outputs:
        if spec.name == "keypoints" and len(spec.shape) == 3 and isinstance(spec.shape[1], int):
            return spec.shape[1]
    return -1


def _describe(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs) or "(none)"
