"""Training configs: typed, strict, one copy of each default.

A config is a frozen dataclass per kind (``PyramidsConfig``, ``TuskConfig``, ...,
named by the method's ``config_class``) whose fields are sections, each a
frozen dataclass: ``model`` (the encoder's keyword arguments, typed from its
signature), ``data``, ``loss``, ``optim``, ``train`` and whatever the kind adds.
The dataclasses hold the defaults; a YAML file in ``config/training/`` lists
only what it changes, and ``--set a.b=value`` changes one key.

Loading is strict (``kp_perception.typed_config``): an unknown key, a wrong
type or per-level lists of different lengths are one ``ConfigError`` naming
the key and the expected type, from the YAML file or from ``--set``.

A YAML may start from another with ``base: <name or relative path>``; keys in
the file override the base's, recursively. An empty YAML is refused (it is
almost always a mistake, and would silently train on the defaults).

Configs written by older versions: a run directory's ``config.yaml`` and a
checkpoint's config are complete when written, so keys missing from them
were added since; they take today's defaults and a warning lists them.
Renamed keys are moved with a warning; keys whose meaning is gone are
refused with how to fix it (:data:`MIGRATIONS`).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from kp_perception.errors import ConfigError
from kp_perception.kinds import KINDS, get_kind
from kp_perception.resources import share_path
from kp_perception.typed_config import ConfigKeyError, field_type, parse, to_plain

log = logging.getLogger(__name__)

CONFIG_DIR = share_path("config", "training")


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section: everything the trainer itself reads.

    ``amp``: float16 autocast with a gradient scaler on CUDA. ``cpu_bf16``: bfloat16
    autocast on CPU (fast on CPUs with AMX or AVX512-BF16; weights, optimiser state
    and losses stay float32; bfloat16 has float32's range, so no scaler).

    best.pt is chosen by the mean validation loss every ``val_every`` steps
    when the method has a val split, otherwise by an exponential moving
    average (decay ``loss_ema``) of the training loss, checked at each checkpoint.

    ``weight_average`` > 0 keeps an exponential moving average (that decay, warmed
    up as min(decay, (1 + t) / (10 + t))) of the parameters the main optimiser
    steps. Adam at a budget's learning rate leaves the last weights noisy; the
    average is what a checkpoint's ``encoder`` (export, inference, evaluation)
    holds, while ``training.method`` keeps the live weights to resume from.
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
    weight_average: float = 0.0

    def check(self) -> None:
        for name in ("steps", "batch_size", "log_every", "image_every", "checkpoint_every", "val_every",
                     "prefetch_factor", "val_batches"):
            if getattr(self, name) < 1:
                raise ConfigKeyError(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigKeyError("num_workers", f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ConfigKeyError("max_minutes", f"max_minutes must be >= 0 or null, got {self.max_minutes}")
        if not 0.0 <= self.loss_ema < 1.0:
            raise ConfigKeyError("loss_ema", f"loss_ema must be in [0, 1), got {self.loss_ema}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ConfigKeyError("weight_average", f"weight_average must be in [0, 1), got {self.weight_average}")


@dataclass(frozen=True)
class Optim:
    """The ``optim`` section: the main optimiser (Adam)."""

    lr: float = 1e-4
    weight_decay: float = 0.0

    def check(self) -> None:
        if self.lr <= 0:
            raise ConfigKeyError("lr", f"lr must be > 0, got {self.lr}")


class TrainingConfig:
    """Base of every kind's config dataclass: each has at least ``optim`` and ``train`` sections.

    Subclasses are ``@dataclass(frozen=True)`` with one field per section.
    """

    optim: Optim
    train: TrainSettings
    # Keys a resumed run may change: they affect how long/how it runs, not what it learns.
    RESUME_MUTABLE: ClassVar[frozenset[str]] = frozenset({
        "train.steps", "train.max_minutes", "train.num_workers", "train.prefetch_factor",
        "train.log_every", "train.image_every", "train.checkpoint_every",
    })

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML types (what ``config.yaml`` and ``checkpoint["config"]`` hold)."""
        return to_plain(self)


# ---------------------------------------------------------------------------------------------
# Old configs


@dataclass(frozen=True)
class Migration:
    """A key an older version wrote: moved to ``new`` with a warning, or (``new`` None) refused with ``fix``."""

    kinds: tuple[str, ...]
    old: str
    new: str | None
    fix: str


MIGRATIONS: tuple[Migration, ...] = (
    # Before per-decoder sections (commit e87523e), the TUSK RGBA decoder's settings sat in `decoder` itself.
    Migration(("tusk",), "decoder.hidden", "decoder.rgba.hidden",
              "the RGBA decoder's settings moved under decoder.rgba"),
    Migration(("tusk",), "decoder.num_frequencies", None,
              "it configured the Fourier-feature RGBA decoder, which was replaced by sprites; delete the key "
              "(a checkpoint trained with it cannot be loaded: retrain, e.g. with --config tusk_tetrominoes)"),
    Migration(("tusk",), "decoder.extent", None,
              "it configured the Fourier-feature RGBA decoder, which was replaced by sprites; delete the key "
              "(a checkpoint trained with it cannot be loaded: retrain, e.g. with --config tusk_tetrominoes)"),
)


def migrate(raw: dict, kind: str, source: str) -> dict:
    """``raw`` with the keys of :data:`MIGRATIONS` moved (a warning each) or refused (a ConfigError)."""
    raw = copy.deepcopy(raw)
    for m in MIGRATIONS:
        if kind not in m.kinds:
            continue
        found, value = _pop(raw, m.old.split("."))
        if not found:
            continue
        if m.new is None:
            raise ConfigError(f"{source}: config key {m.old!r} is from an older version: {m.fix}")
        _put(raw, m.new.split("."), value)
        log.warning("%s: config key %r is now %r (%s); update the file", source, m.old, m.new, m.fix)
    return raw


def _pop(node: dict, parts: list[str]) -> tuple[bool, Any]:
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    return True, node.pop(parts[-1])


def _put(node: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# YAML files


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def config_path(name_or_path: str | Path) -> Path | None:
    """The YAML for a config name (``config/training/<name>.yaml``) or a path; None for a kind without one.

    A kind's name stands for its default config (``kp_perception.kinds``):
    its YAML, or None when the kind's defaults are the code's.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    if text in KINDS:
        default = KINDS[text].default_config
        if default is None:
            return None
        text = default
    path = CONFIG_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted({p.stem for p in CONFIG_DIR.glob("*.yaml")} | set(KINDS)) if CONFIG_DIR.is_dir() else []
        raise ConfigError(f"{path}: no config named {text!r} (known: {', '.join(known) or 'none'})")
    return path


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping in ``path`` with its ``base`` chain merged under it (unchecked)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ConfigError(
            f"{path}: the config file is empty; list the settings it changes (e.g. 'base: tusk_tetrominoes' "
            "and a section), or leave out --config to use the kind's defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = Path(str(base))
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base_path = path.parent / base_path
    resolved = config_path(base_path if base_path.suffix else str(base))
    merged = read_yaml(resolved, (*seen, path.resolve())) if resolved is not None else {}
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


# ---------------------------------------------------------------------------------------------
# Overrides and typed configs


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


def apply_overrides(raw: dict, overrides: list[str], cls: type, source: str = "config") -> dict:
    """A new raw config with each ``a.b=value`` set; a key ``cls`` does not have is an error naming it."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        try:
            field_type(cls, parts)
        except ConfigKeyError as exc:
            raise ConfigError(f"{source}: {exc} in override {text!r}") from None
        _put(raw, parts, value)
    return raw


def config_class(kind: str, method: Any = None) -> type:
    """The config dataclass of ``kind`` (its method's ``config_class``), or of ``method`` when given."""
    from kp_perception_training.methods import resolve_method

    cls = method if isinstance(method, type) else resolve_method(method or kind)
    if cls.config_class is None:
        raise ConfigError(f"method {cls.__name__} has no config_class")
    return cls.config_class


def build_config(cls: type, raw: dict, source: str = "config", overrides: list[str] | None = None):
    """The typed config ``cls`` from a raw mapping plus ``--set`` overrides; one ConfigError per problem."""
    raw = apply_overrides(raw, overrides or [], cls, source)
    try:
        return parse(cls, raw)
    except ConfigKeyError as exc:
        set_by = [o for o in overrides or [] if o.split("=", 1)[0].strip() == exc.key]
        raise ConfigError(f"{source}: {exc}" + (f" (from --set {set_by[-1]})" if set_by else "")) from None


def load_config(kind: str, config: str | Path | None = None, overrides: list[str] | None = None, method: Any = None):
    """Resolve a fresh run's config: the kind's defaults, the YAML (``config`` or the kind's own) and overrides."""
    get_kind(kind)
    cls = config_class(kind, method)
    path = config_path(config if config is not None else kind)
    raw = migrate(read_yaml(path), kind, str(path)) if path is not None else {}
    return build_config(cls, raw, str(path) if path is not None else f"{kind} defaults", overrides)


def config_from_saved(
    kind: str, saved: dict, source: str, overrides: list[str] | None = None, method: Any = None, warn: bool = True
):
    """A run's or checkpoint's saved config as the typed config; keys it lacks are listed in a warning."""
    if not isinstance(saved, dict):
        raise ConfigError(f"{source}: the saved config is not a mapping")
    cls = config_class(kind, method)
    raw = migrate(saved, kind, source)
    config = build_config(cls, raw, source, overrides)
    missing = sorted(set(flatten(config.to_dict())) - set(flatten(apply_overrides(raw, overrides or [], cls))))
    if missing and warn:
        shown = ", ".join(f"{k}={flatten(config.to_dict())[k]!r}" for k in missing[:8])
        log.warning(
            "%s: written by an older version without %s; using today's defaults: %s%s",
            source, "these keys" if len(missing) > 1 else "this key", shown, " ..." if len(missing) > 8 else "",
        )
    return config


def checkpoint_config(checkpoint: dict, source: str = "checkpoint"):
    """The typed config a checkpoint was made with, for evaluating it.

    Missing keys take the defaults without a warning: checkpoints written for
    export alone (tests, benchmarks) hold only the ``model`` and ``data``
    sections, and an encoder whose weights do not fit is refused anyway when
    they are loaded. Resuming a run warns (:func:`config_from_saved`).
    """
    return config_from_saved(checkpoint["kind"], checkpoint["config"], source, warn=False)


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


def incompatible_keys(saved: TrainingConfig, new: TrainingConfig) -> list[str]:
    """Keys whose values differ between two configs, except those a resumed run may change."""
    a, b = flatten(saved.to_dict()), flatten(new.to_dict())
    mutable = type(new).RESUME_MUTABLE
    return sorted(k for k in set(a) | set(b) if k not in mutable and a.get(k, "<missing>") != b.get(k, "<missing>"))


def dump_config(config: TrainingConfig, path: Path) -> None:
    """Write the resolved config as YAML (the run directory's ``config.yaml``)."""
    from kp_perception.atomic import atomic_write_text

    atomic_write_text(path, config_yaml(config))


def config_yaml(config: TrainingConfig) -> str:
    """The resolved config as YAML text, every key present."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def read_run_config(path: Path, kind: str) -> TrainingConfig:
    """A run directory's ``config.yaml`` (or any complete config file) as the typed config."""
    try:
        raw = _yaml_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the run's config ({exc})") from None
    return config_from_saved(kind, raw or {}, str(path))

