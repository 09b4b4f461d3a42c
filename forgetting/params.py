"""The one loader every stage calls before it does any work: `params.yaml` into the typed schema of
`forgetting.schema`.

It refuses unknown and missing keys, wrong types and out-of-range values with a `ParamsError` that names the
dotted key (`adapt.ewc_lambda`). Floats may arrive as strings: `dvc exp run -S adapt.lr=1e-5` writes `1e-05`,
which PyYAML reads as a string.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from forgetting.schema import Params, ParamsError, require


def _convert(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint`, or a ParamsError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        require(value in typing.get_args(hint), key, f"must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is dict or hint is dict:
        require(isinstance(value, dict), key, f"must be a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint) or (str, Any)
        if value_type is Any:  # free-form (model.config: Wav2Vec2Config checks it)
            return dict(value)
        for name in value:
            require(isinstance(name, key_type), f"{key}.{name}", f"must be a {key_type.__name__} key")
        return {name: _convert(item, value_type, f"{key}.{name}") for name, item in value.items()}
    if origin is list:
        require(isinstance(value, list), key, f"must be a list, got {value!r}")
        (item_type,) = typing.get_args(hint)
        return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        require(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # "1e-05" from `dvc exp run -S`
            try:
                value = float(value)
            except ValueError:
                raise ParamsError(f"{key}: must be a number, got {value!r}") from None
        require(isinstance(value, int | float) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        require(math.isfinite(value), key, f"must be finite, got {value!r}")
        return float(value)
    if hint is str:
        require(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported type {hint!r} in the params schema")


def _build(cls: type, raw: Any, key: str) -> Any:
    require(isinstance(raw, dict), key or "params.yaml", f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{key}." if key else ""
    unknown = sorted(set(raw) - set(fields))
    require(not unknown, f"{prefix}{unknown[0] if unknown else ''}", f"unknown key (allowed: {', '.join(fields)})")
    values = {}
    for name in fields:
        require(name in raw, f"{prefix}{name}", "missing")
        values[name] = _convert(raw[name], hints[name], f"{prefix}{name}")
    obj = cls(**values)
    obj.check(key)
    return obj


def parse_params(raw: Any) -> Params:
    """Validate a parsed params mapping (e.g. `yaml.safe_load` of params.yaml)."""
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `path`; the error names the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return parse_params(raw)
    except (ParamsError, yaml.YAMLError) as err:
        raise ParamsError(f"{path}: {err}") from err
