"""Strict, typed configuration sections: frozen dataclasses built from plain YAML values.

Why: a config typo (``optim.lrr``) or a wrong type (``optim.lr=abc``) must be
one clear error naming the key and the type it expects, at load time, not a
silently ignored setting or a traceback mid-run. Every config section is a
frozen dataclass; :func:`parse` builds one from a mapping and checks every
key and value against the field types. The dataclass's defaults are the only
copy of each default.

Types understood: ``int``, ``float`` (an int is accepted), ``bool``, ``str``,
``None``, unions (``int | None``), ``Literal[...]``, ``tuple[X, ...]`` /
``Sequence[X]`` / ``list[X]`` (stored as tuples), fixed ``tuple[X, Y]``,
and nested dataclasses. A dataclass may define ``check(self)`` raising
``ConfigError`` for rules across fields (e.g. per-level lists of one length);
its message names keys relative to the section, and is prefixed with the
section's path.

:func:`section_from_signature` makes the section of a class whose keyword
arguments *are* the section (an encoder, a decoder), so the constructor's
signature stays the one place its defaults and types are written.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union

from kp_perception.errors import ConfigError

T = TypeVar("T")


class ConfigKeyError(ConfigError):
    """A ConfigError about one key; ``key`` is its dotted path (for callers that add where it came from)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def parse(cls: type[T], data: Any, key: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data`` (a mapping, None = all defaults, or a ``cls``).

    Unknown keys, missing required keys and values of the wrong type raise
    :class:`ConfigKeyError` naming the dotted key (``key`` prefixes nested ones).
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, collections.abc.Mapping):
        raise ConfigKeyError(key, f"{key or 'the config'} must be a mapping of keys to values, got {_show(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            raise ConfigKeyError(_join(key, str(name)), unknown_key_message(_join(key, str(name)), fields))
    values = {}
    for name in fields:
        if name in data:
            values[name] = coerce(data[name], hints[name], _join(key, name))
    try:
        obj = cls(**values)
    except TypeError:  # a required field without a value
        missing = [n for n, f in fields.items() if n not in values and _required(f)]
        if not missing:
            raise
        raise ConfigKeyError(_join(key, missing[0]), f"missing config key {_join(key, missing[0])!r}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigKeyError as exc:
            raise ConfigKeyError(_join(key, exc.key), f"{key + '.' if key else ''}{exc}") from None
        except ConfigError as exc:
            raise ConfigKeyError(key, f"{key + '.' if key else ''}{exc}") from None
    return obj


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the type ``tp`` (and normalised: lists -> tuples, int -> float)."""
    ok, out = _try(value, tp, key)
    if not ok:
        raise ConfigKeyError(key, f"{key} must be {describe(tp)}, got {_show(value)}")
    return out


def _try(value: Any, tp: Any, key: str) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is None or tp is type(None):
        return value is None, None
    if origin in (Union, types.UnionType):
        for member in typing.get_args(tp):
            ok, out = _try(value, member, key)
            if ok:
                return True, out
        # A mapping for a union holding a dataclass: report the dataclass's own error (names the inner key).
        for member in typing.get_args(tp):
            if dataclasses.is_dataclass(member) and isinstance(value, collections.abc.Mapping):
                return True, parse(member, value, key)
        return False, None
    if origin is Literal:
        return value in typing.get_args(tp), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return True, value
        if value is None or isinstance(value, collections.abc.Mapping):
            return True, parse(tp, value, key)
        return False, None
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False, None
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, None
            items = list(zip(value, args, strict=True))
        else:
            item_tp = args[0] if args else Any
            items = [(v, item_tp) for v in value]
        out = []
        for i, (v, item_tp) in enumerate(items):
            ok, item = _try(v, item_tp, f"{key}[{i}]")
            if not ok:
                return False, None
            out.append(item)
        return True, tuple(out)
    raise TypeError(f"config field {key}: unsupported type {tp!r}")


def describe(tp: Any) -> str:
    """A type as a user reads it: ``float``, ``int or null``, ``a list of int``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(tp)
    if tp is None or tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping (" + ", ".join(f.name for f in dataclasses.fields(tp)) + ")"
    if origin in (tuple, list, collections.abc.Sequence):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(describe(a) for a in args) + "]"
        return f"a list of {describe(args[0]) if args else 'values'}"
    return getattr(tp, "__name__", str(tp))


def unknown_key_message(key: str, known: collections.abc.Iterable[str]) -> str:
    """``unknown config key 'optim.lrr' (did you mean 'lr'?; known: lr, weight_decay)``."""
    known = list(known)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown config key {key!r} ({hint}known: {', '.join(known) or 'none'})"


def to_plain(obj: Any) -> Any:
    """A dataclass (or value) as plain YAML types: mappings, lists, scalars (for YAML, JSON, checkpoints)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def field_type(cls: type, path: list[str]) -> Any:
    """The type at dotted ``path`` inside dataclass ``cls``; raises ConfigKeyError for an unknown key."""
    tp: Any = cls
    for depth, part in enumerate(path):
        section = _dataclass_in(tp)
        key = ".".join(path[: depth + 1])
        if section is None:
            raise ConfigKeyError(key, f"config key {'.'.join(path[:depth])!r} is a value, not a section")
        hints = _hints(section)
        if part not in hints:
            raise ConfigKeyError(key, unknown_key_message(key, hints))
        tp = hints[part]
    return tp


@cache
def section_from_signature(
    target: Any, name: str, exclude: tuple[str, ...] = (), defaults: tuple[tuple[str, Any], ...] = ()
) -> type:
    """A frozen dataclass whose fields are ``target``'s keyword arguments (types and defaults from its signature).

    ``exclude``: arguments the config does not set (e.g. fixed by the caller);
    ``defaults``: (name, value) pairs that replace the signature's default for
    this section. ``target`` is a class (its ``__init__``) or a function.
    """
    func = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(func)
    replaced = dict(defaults)
    fields = []
    for param in inspect.signature(func).parameters.values():
        if param.name in ("self", *exclude) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = replaced.get(param.name, param.default)
        if isinstance(default, list):
            default = tuple(default)
        spec = dataclasses.field() if default is inspect.Parameter.empty else dataclasses.field(default=default)
        fields.append((param.name, hints.get(param.name, Any), spec))
    section = dataclasses.make_dataclass(name, fields, frozen=True)
    section.__doc__ = f"The keyword arguments of {getattr(target, '__qualname__', target)} (see its docstring)."
    return section


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        for member in typing.get_args(tp):
            if dataclasses.is_dataclass(member):
                return member
    return None


@cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"
