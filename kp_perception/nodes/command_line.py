"""``-p name:=value`` arguments checked against the declared parameter types, before ROS 2 can drop them.

Why this exists: with ``--params-file config/pyramids.yaml -p score_threshold:=abc``
the node used to start with the file's 0.0 and say nothing. rcl parses every
parameter value into an ``rcl_variant_t`` that has one slot per type (bool,
integer, double, string, arrays). A second value for the same parameter only
replaces the slot of its own type (rcl_yaml_param_parser ``parse_value``:
"Overwriting, deallocate original" for that slot alone), so the file's double
and the command line's string both survive, and the conversion to a
parameter takes the first filled slot in the order bool, integer, double,
string. A ``-p`` value of a "later" type than the file's therefore vanishes
silently; one of an "earlier" type (``-p score_threshold:=1``) wins and is
then refused by the type check. Without a params file the same string is
refused too. So the merge is rcl's, and the only place that still sees what
the user typed is the command line itself: :func:`check_parameter_arguments`
reads the ``-p`` arguments, types each value with rcl's own rule
(:func:`rcl_value_type`) and refuses any whose type is not the declared one,
with one message whatever the parameter files say.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from kp_perception.errors import ConfigError

# rcl_yaml_param_parser get_value(): these unquoted words are booleans.
_RCL_BOOL_WORDS = frozenset(
    "Y y yes Yes YES true True TRUE on On ON N n no No NO false False FALSE off Off OFF".split()
)
_TYPE_NAMES = {bool: "a bool", int: "an integer", float: "a double", str: "a string", list: "an array"}
_EXAMPLES = {bool: "true", int: "2", float: "0.5", str: "text"}


def parameter_arguments(argv: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(node_prefix, name, value_text)`` of every ``-p``/``--param`` inside ``--ros-args`` sections.

    ``node_prefix`` is ``""`` for ``-p name:=value`` and the node part of
    ``-p node:name:=value``. A section ends at ``--`` or at the next
    ``--ros-args``; arguments outside sections are the program's own.
    """
    found: list[tuple[str, str, str]] = []
    inside = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside and arg in ("-p", "--param") and i + 1 < len(args):
            i += 1
            key, sep, value = args[i].partition(":=")
            if sep:
                prefix, _, name = key.rpartition(":")
                found.append((prefix, name, value))
        i += 1
    return found


def rcl_value_type(text: str) -> type:
    """The type rcl gives a ``-p`` value: bool, int, float, str or list (rcl_yaml_param_parser's rule).

    Quoted values and ``!!str`` are strings; rcl's boolean words are bools;
    what ``strtoll(text, 0)`` reads whole is an integer, what ``strtod`` reads
    whole a double (also ``.inf``/``.nan``); ``[...]`` is an array; the rest
    is a string.
    """
    value = text.strip()
    if value.startswith("!!str"):
        return str
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return str
    if value.startswith("[") and value.endswith("]"):
        return list
    if value in _RCL_BOOL_WORDS:
        return bool
    if re.fullmatch(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", value):
        return int
    if re.fullmatch(r"[+-]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)", value):
        return float
    if "_" not in value:
        try:
            number = float(value)
        except ValueError:
            return str
        if value and (math.isfinite(number) or value.lstrip("+-").lower() in ("inf", "infinity", "nan")):
            return float
    return str


def _applies_to(prefix: str, node_names: Iterable[str]) -> bool:
    if not prefix or prefix in ("*", "/**"):
        return True
    names = set(node_names)
    return prefix in names or prefix.lstrip("/") in {n.lstrip("/") for n in names}


def check_parameter_arguments(
    argv: Sequence[str], declared: Mapping[str, type], node_names: Iterable[str] = ()
) -> None:
    """Raise :class:`ConfigError` for the first ``-p`` value whose rcl type is not the declared type.

    ``declared`` maps parameter names to Python types (bool, int, float,
    str); other names (``qos_overrides.*``, unknown ones) are left to the
    node. ``node_names`` are the names a ``-p node:name:=value`` prefix may
    use for this node (its name and fully qualified name).
    """
    names = list(node_names)
    for prefix, name, text in parameter_arguments(argv):
        expected = declared.get(name)
        if expected is None or not _applies_to(prefix, names):
            continue
        got = rcl_value_type(text)
        if got is not expected:
            raise ConfigError(
                f"parameter '{name}': -p {name}:={text} is {_TYPE_NAMES[got]}, but '{name}' is "
                f"{_TYPE_NAMES[expected]} parameter (e.g. -p {name}:={_EXAMPLES[expected]}); refused, as "
                "ROS 2 would otherwise silently keep a --params-file value"
            )
