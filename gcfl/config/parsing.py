"""Reading a run config: Flower's flat dict or a user's ``key=value`` into a checked GcflConfig."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from gcfl.config.checks import ConfigError
from gcfl.config.presets import NOTEBOOK_RULES
from gcfl.config.schema import GcflConfig


def _fields_by_key() -> dict[str, dataclasses.Field[Any]]:
    return {f.metadata["key"]: f for f in dataclasses.fields(GcflConfig)}


def config_keys() -> tuple[str, ...]:
    """Every valid run-config key, in declaration order."""
    return tuple(_fields_by_key())


def default_run_config() -> dict[str, bool | int | float | str]:
    """The default value of every run-config key, as declared (``-1`` for auto)."""
    defaults: dict[str, bool | int | float | str] = {}
    for f in dataclasses.fields(GcflConfig):
        assert isinstance(f.default, (bool, int, float, str)), f.name  # every field has one
        defaults[f.metadata["key"]] = f.default
    return defaults


def _coerce(key: str, expected: type, value: Any) -> Any:
    """Convert a run-config value to the field's type, or say what is wrong."""
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: {value!r} is not a finite number")
            return float(value)
    elif expected is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")


def parse_run_config(run_config: Mapping[str, Any]) -> GcflConfig:
    """Check a run-config mapping and return it as a :class:`GcflConfig`.

    Missing keys take their defaults; an unknown key, a wrong type or a value
    out of range raises :class:`ConfigError` naming the key.
    """
    fields = _fields_by_key()
    unknown = sorted(set(run_config) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s): {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    type_of = {name: hint for name, hint in GcflConfig.__annotations__.items()}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        spec = fields[key]
        coerced = _coerce(key, types[type_of[spec.name]], value)
        problem = spec.metadata["check"](coerced) if spec.metadata["check"] else None
        if problem:
            raise ConfigError(f"{key}: {coerced!r} {problem}")
        values[spec.name] = coerced
    if values.get("rules") == "notebook":
        values.update({fields[key].name: value for key, value in NOTEBOOK_RULES.items()})
    return GcflConfig(**values)


# The last few parsed run configs, oldest first. A process sees one run config (a
# SuperNode's ClientApp, a worker) or a handful (the compare runner), so a small
# bound keeps every hit without letting a long-lived process grow it. The lock:
# Flower may call a ClientApp from several threads.
CONFIG_CACHE_SIZE = 8
_PARSED: dict[tuple[tuple[str, type, Any], ...], GcflConfig] = {}
_PARSED_LOCK = threading.Lock()


def config_of(run_config: Mapping[str, Any]) -> GcflConfig:
    """:func:`parse_run_config`, memoised per process on the mapping's items.

    Hot paths (one call per Flower message or per fit) get the same frozen
    :class:`GcflConfig` back without re-checking every key. A bad config is
    not cached: it raises :class:`ConfigError` on every call.
    """
    # The value's type is part of the key: True == 1 == 1.0, yet only some of
    # them are valid for a given key.
    key = tuple(sorted((name, type(value), value) for name, value in run_config.items()))
    try:
        hash(key)
    except TypeError:
        # An unhashable value is never a valid one: let the parser name the key.
        return parse_run_config(run_config)
    with _PARSED_LOCK:
        config = _PARSED.pop(key, None)
        if config is None:
            config = parse_run_config(run_config)
            while len(_PARSED) >= CONFIG_CACHE_SIZE:
                del _PARSED[next(iter(_PARSED))]
        _PARSED[key] = config
    return config


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override as typed by a user on the command line.

    The value is converted to the key's type; an unknown key lists the valid ones.
    """
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    fields = _fields_by_key()
    if key not in fields:
        raise ConfigError(f"unknown run-config key: {key}; valid keys: {', '.join(fields)}")
    kind = GcflConfig.__annotations__[fields[key].name]
    raw = raw.strip("'\"") if kind == "str" else raw
    try:
        converters: dict[str, Callable[[str], Any]] = {
            "int": int,
            "float": float,
            "str": str,
            "bool": lambda s: {"true": True, "false": False}[s.lower()],
        }
        value: Any = converters[kind](raw)
    except (ValueError, KeyError):
        raise ConfigError(f"{key}: {raw!r} is not a valid {kind}") from None
    return key, value
