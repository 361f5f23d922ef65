"""A strict reader of YAML into frozen dataclasses: a YAML 1.2 parser, every key required, every type
checked, and one short line for whatever is wrong (a huge number, an alias bomb, a loop, bad bytes).

``config`` holds the schema (``params.yaml``'s sections); this module knows nothing of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from runtime.errors import PipelineError


class ConfigError(PipelineError):
    """A key of ``params.yaml`` is unknown, missing, of the wrong type or impossible."""


class Renamed(NamedTuple):
    """A key's new name and why it changed: a dataclass's ``RENAMED`` maps old names to these, so a file that
    still says the old name gets one line naming the new one. Its ``RETIRED`` maps a key, or ``key=value``,
    that no longer exists to what to do instead."""

    new: str
    why: str


def check(ok: bool, key: str, problem: str) -> None:
    """Raise ConfigError naming ``key``; ``load_params`` puts the file's path in front."""
    if not ok:
        raise ConfigError(f"{key} {problem}")


def read_yaml(path: Path) -> Any:
    """The plain data of the YAML file at ``path``; any problem is a ConfigError naming it."""
    try:
        raw = YAML(typ="safe", pure=True).load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stage from the repository root") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    except YAMLError as error:
        raise ConfigError(f"{path}: {yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be params; write its values out") from None
    except ValueError as error:  # ruamel's int() of a number past Python's 4,300 digits, and the like
        raise ConfigError(f"{path}: cannot read a value ({shown(str(error))}); no param needs that, fix it") from None
    if _count_values(raw) > MAX_YAML_VALUES:
        raise ConfigError(
            f"{path}: holds more than {MAX_YAML_VALUES:,} values once its YAML aliases (*name) are expanded; "
            "write the values out instead of aliasing aliases"
        )
    return raw


def yaml_problem(error: YAMLError) -> str:
    """What ruamel says is wrong, and where, in one line."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    # ruamel's own wording ("found duplicate key", "expected ',' or ']'"), without its multi-line context.
    said = " ".join(str(getattr(error, "problem", None) or error).split())
    return f"not valid YAML{where}: {said}; fix it"


def parse(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types field by field."""
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted((key for key in raw if key not in fields), key=str)  # YAML keys may be numbers too
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        renamed = getattr(cls, "RENAMED", {}).get(unknown[0])
        if renamed:
            new = f"{prefix}.{renamed.new}" if prefix else renamed.new
            fix = f"remove {key}, {new} is there" if renamed.new in raw else "rename the key"
            raise ConfigError(f"{key} is now {new}; {fix} ({renamed.why})")
        retired = getattr(cls, "RETIRED", {}).get(str(unknown[0]))
        if retired:
            raise ConfigError(f"{key} {retired}")
        raise ConfigError(f"unknown key {key}; remove it or fix its spelling (known here: {', '.join(fields)})")
    values = {}
    for name in fields:
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            raise ConfigError(f"missing key {key}; add it (docs/params.md lists every key)")
        retired = getattr(cls, "RETIRED", {}).get(f"{name}={raw[name]}")
        if retired:
            raise ConfigError(f"{key} {raw[name]} {retired}")
        values[name] = _coerce(hints[name], raw[name], key)
    return cls(**values)


LARGEST_INT = 2**63  # no count, size or seed comes near; a longer one would only be slow to print
SHOWN_CHARACTERS = 60  # of a value in an error line
MAX_YAML_VALUES = 100_000  # params.yaml holds about 150; YAML aliases can make a small file hold billions


class _Shown(reprlib.Repr):
    """``repr`` cut short: a value in an error line stays short whatever the user wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist = 2, 4, 4
        self.maxstring = self.maxother = SHOWN_CHARACTERS

    def repr_int(self, value: int, level: int) -> str:
        digits = round(value.bit_length() * math.log10(2))
        if digits > 1000:  # str() of a 5,000-digit int raises ValueError, and its digits say nothing useful
            return f"a number of about {digits:,} digits"
        return repr(value)


def shown(value: Any) -> str:
    """``value`` as an error line shows it: at most a few dozen characters, however large it is."""
    text = _Shown().repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def _count_values(raw: Any, budget: int = MAX_YAML_VALUES) -> int:
    """How many values ``raw`` holds, counting each alias where it is used; stops past ``budget``."""
    stack, seen = [raw], 0
    while stack and seen <= budget:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
    return seen


def _coerce(kind: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, key)
    if origin is Literal:
        choices = typing.get_args(kind)
        check(
            value in choices,
            key,
            f"is {shown(value)}; use one of {', '.join(map(str, choices))}",
        )
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        check(isinstance(value, list), key, f"is {shown(value)}; use a list, e.g. [32, 64]")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is float:
        # ruamel reads 1e-05 as a float already; a quoted number is still a user's obvious intent.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"is {shown(value)}; use a number",
        )
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        check(math.isfinite(number), key, f"is {shown(value)}; use a finite number")
        return number
    if kind is bool:
        check(isinstance(value, bool), key, f"is {shown(value)}; use true or false")
        return value
    if kind is int:
        check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"is {shown(value)}; use a whole number",
        )
        check(abs(value) < LARGEST_INT, key, f"is {shown(value)}; use a whole number below 2**63")
        return value
    if kind is str:
        check(isinstance(value, str), key, f"is {shown(value)}; use a string")
        return value
    raise TypeError(f"unsupported field type {kind!r} for {key}")
