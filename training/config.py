"""Training configs: YAML files in ``config/training/``, ``--set a.b=value`` overrides, trainer settings.

A config is a plain dict of YAML types with sections ``model`` (exactly the
kwargs of ``build_encoder``), ``data``, ``loss``, ``optim`` and ``train``
(plus anything a method adds). The ``train`` section is the trainer's and is
typed by ``TrainSettings``; its defaults (and ``optim``'s) are merged under
every file so a method's YAML only lists what it changes.

A YAML may start from another with ``base: <name or relative path>``; keys
in the file override the base's, recursively.

Overrides can only replace keys that exist: a typo (``train.step=5``) is an
error naming the key, never a silently ignored setting. Values are parsed as
YAML (``1e-3`` -> float, ``[10, 20]`` -> list, ``null`` -> None).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kp_perception.errors import ConfigError
from kp_perception.resources import share_path

CONFIG_DIR = share_path("config", "training")

# Default config file for each kind when --config is not given.
DEFAULT_CONFIGS = {
    "pyramids": "pyramids",
    "keynet": "keynet",
    "transporter": "transporter",
    "tusk": "tusk_tetrominoes",
}


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section: everything the trainer itself reads.

    ``amp``: float16 autocast with a gradient scaler on CUDA. ``cpu_bf16``: bfloat16
    autocast on CPU (fast on CPUs with AMX or AVX512-BF16; weights, optimiser state
    and losses stay float32; bfloat16 has float32's range, so no scaler).

    best.pt is chosen by the mean validation loss every ``val_every`` steps
    when the method has a val split, otherwise by an exponential moving
    average (decay ``loss_ema``) of the training loss, checked at each checkpoint.
    """

    steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    num_workers: int = 1
    prefetch_factor: int = 4
    log_every: int = 10
    image_every: int = 250
    checkpoint_every: int = 250
    val_every: int = 250
    val_batches: int = 4
    grad_clip: float | None = None
    max_minutes: float | None = None
    amp: bool = True
    cpu_bf16: bool = False
    find_unused_parameters: bool = True
    loss_ema: float = 0.98


TRAIN_DEFAULTS: dict[str, Any] = dataclasses.asdict(TrainSettings())
OPTIM_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 0.0}

# train.* keys a resumed run may change: they affect how long/how it runs, not what it learns.
RESUME_MUTABLE = {
    "train.steps",
    "train.max_minutes",
    "train.num_workers",
    "train.prefetch_factor",
    "train.log_every",
    "train.image_every",
    "train.checkpoint_every",
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def config_path(kind_or_path: str | Path) -> Path:
    """The YAML file for a kind or config name (``config/training/<name>.yaml``) or an explicit path."""
    text = str(kind_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    name = DEFAULT_CONFIGS.get(text, text)
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
        raise ConfigError(f"{path}: no config named {text!r} (known: {', '.join(known) or 'none'})")
    return path


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base_path = path.parent / base_path
    merged = _read_yaml(config_path(base_path if base_path.suffix else str(base)), (*seen, path.resolve()))
    return deep_merge(merged, data)


def deep_merge(base: dict, update: dict) -> dict:
    """A new dict: ``base`` with ``update``'s keys replaced recursively (mappings merge, others replace)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into (["a", "b"], YAML-typed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(config: dict, overrides: list[str], source: str = "config") -> dict:
    """A new config with each ``a.b=value`` applied; a key that does not exist is an error naming it."""
    config = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"{source}: unknown config key {where!r} in override {text!r}")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return config


def with_defaults(config: dict, source: str = "config") -> dict:
    """Merge the trainer's ``train``/``optim`` defaults under ``config``; unknown ``train`` keys are an error."""
    train = config.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{source}: 'train' must be a mapping")
    unknown = sorted(set(train) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown config key 'train.{unknown[0]}' (known: {', '.join(TRAIN_DEFAULTS)})")
    return deep_merge({"train": TRAIN_DEFAULTS, "optim": OPTIM_DEFAULTS}, config)


def load_config(kind_or_path: str | Path, overrides: list[str] | None = None) -> dict:
    """Resolve a config: the YAML (with its ``base`` chain) + trainer defaults + overrides."""
    path = config_path(kind_or_path)
    config = with_defaults(_read_yaml(path), str(path))
    config = apply_overrides(config, overrides or [], str(path))
    train_settings(config, str(path))  # validate types now, not mid-run
    return config


def train_settings(config: dict, source: str = "config") -> TrainSettings:
    """The typed ``train`` section; a value of the wrong type is an error naming the key."""
    section = {**TRAIN_DEFAULTS, **(config.get("train") or {})}
    values = {}
    for field in dataclasses.fields(TrainSettings):
        value = section[field.name]
        default = TRAIN_DEFAULTS[field.name]
        optional = "None" in str(field.type)
        if value is None and optional:
            values[field.name] = None
            continue
        kind = type(default) if default is not None else float
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
            elif kind is int:
                if isinstance(value, bool) or float(value) != int(value):
                    raise TypeError
                value = int(value)
            else:
                value = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}: train.{field.name} must be {kind.__name__}{' or null' if optional else ''}, got {value!r}"
            ) from None
        values[field.name] = value
    settings = TrainSettings(**values)
    for name in ("steps", "batch_size", "log_every", "image_every", "checkpoint_every", "val_every", "prefetch_factor"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{source}: train.{name} must be >= 1, got {getattr(settings, name)}")
    if settings.num_workers < 0:
        raise ConfigError(f"{source}: train.num_workers must be >= 0, got {settings.num_workers}")
    return settings


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for comparing configs key by key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def incompatible_keys(saved: dict, new: dict) -> list[str]:
    """Keys whose values differ between two configs, except those a resumed run may change."""
    a, b = flatten(saved), flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_MUTABLE and a.get(k, "<missing>") != b.get(k, "<missing>"))


def dump_config(config: dict, path: Path) -> None:
    """Write the resolved config as YAML (the run directory's ``config.yaml``)."""
    from kp_perception.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
