"""Typed reading of JSON into frozen dataclasses: the one place a manifest's shape is checked.

`build(cls, data, path)` walks the dataclass's type hints and raises `SchemaError` naming the first
field that is missing, unexpected or of the wrong type, as a dotted path (`graphs.decoder.file`).
Supported hints: int, float, str, bool, dict (any JSON object), tuple[X, ...], tuple[X, Y], list[X],
dict[str, X], X | None, unions of those, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache


class SchemaError(ValueError):
    """Data that does not match a schema dataclass; the message names the field."""


def build(cls, data, path: str = ""):
    """An instance of dataclass `cls` from the JSON value `data`."""
    return _value(cls, data, path or cls.__name__)


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _value(hint, data, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, data, path)
    if origin in (typing.Union, types.UnionType):
        return _union(args, data, path)
    if hint is bool:
        if not isinstance(data, bool):
            raise SchemaError(f"{path}: expected true or false, got {data!r}")
        return data
    if hint is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SchemaError(f"{path}: expected an integer, got {data!r}")
        return data
    if hint is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SchemaError(f"{path}: expected a number, got {data!r}")
        return float(data)
    if hint is str:
        if not isinstance(data, str):
            raise SchemaError(f"{path}: expected a string, got {data!r}")
        return data
    if hint is dict or origin is dict:
        if not isinstance(data, dict):
            raise SchemaError(f"{path}: expected an object, got {_kind(data)}")
        if not args:
            return data
        return {_value(args[0], k, f"{path}.<key>"): _value(args[1], v, f"{path}.{k}") for k, v in data.items()}
    if origin in (tuple, list):
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a list, got {_kind(data)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(data) != len(args):
                raise SchemaError(f"{path}: expected {len(args)} values, got {len(data)}")
            return tuple(_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
        items = [_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if hint is typing.Any:
        return data
    raise TypeError(f"unsupported schema type {hint!r} at {path}")  # a bug in a schema, not in the data


def _union(args, data, path: str):
    if data is None:
        if type(None) in args:
            return None
        raise SchemaError(f"{path}: expected a value, got null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _value(arg, data, path)
        except SchemaError as err:
            errors.append(str(err).split(": ", 1)[-1])
    raise SchemaError(f"{path}: " + " or ".join(dict.fromkeys(errors)))


def _dataclass(cls, data, path: str):
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected an object, got {_kind(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unexpected = sorted(set(data) - set(fields))
    if unexpected:
        raise SchemaError(f"{path}: unexpected field {unexpected[0]!r}")
    hints, values = _hints(cls), {}
    for name, field in fields.items():
        if name in data:
            values[name] = _value(hints[name], data[name], f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{path}: missing field {name!r}")
    return cls(**values)


def to_json_value(value):
    """Dataclasses, tuples and dicts as plain JSON values (the inverse of `build`). An optional field
    left at None is omitted, unless the class lists it in `_explicit_nulls` (a null that says "none")."""
    if dataclasses.is_dataclass(value):
        keep = getattr(value, "_explicit_nulls", ())
        return {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (getattr(value, f.name) is None and f.default is None and f.name not in keep)}
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


def _kind(data) -> str:
    return "null" if data is None else type(data).__name__.replace("NoneType", "null")
