"""Typed dataclass configs loaded from YAML, with ``key.sub=value`` command-line overrides.

A config is a dataclass whose fields all have defaults; a YAML experiment file is a short diff over those defaults
and overrides are applied after it. Values are checked against the field annotations, and every mistake is a
one-line `ConfigError` naming the full dotted key and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lafs.errors import ConfigError
from lafs.files import write_atomic

T = TypeVar("T")

CLI = "command line"
_UNIONS = (Union, types.UnionType)
_NONE = type(None)


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key=value`` overrides in order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    cfg: Any = cls()
    if path is not None:
        cfg = _merge(cfg, _read_yaml(path), "", str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value ({CLI})")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: cannot parse value {raw!r} ({CLI})") from None
        for name in reversed(key.split(".")):
            value = {name: value}
        cfg = _merge(cfg, value, "", CLI)
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of YAML-safe values (tuples become lists, paths become strings)."""
    return _plain(cfg)


def save_config(cfg: Any, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` to ``<run_dir>/config.yaml`` atomically and return that path."""
    # A crash mid-write must never leave a truncated config next to the checkpoints it describes.
    return write_atomic(Path(run_dir) / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def parse_cli(argv: Sequence[str] | None, cls: type[T], default_config: str | None = None, description: str = "") -> T:
    """Parse ``[--config PATH] [key=value ...]`` and load the config (`ConfigError` is left to the caller)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", metavar="PATH", default=default_config, help="YAML file over the defaults")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides such as model.depth=6")
    args = parser.parse_args(None if argv is None else list(argv))
    return load_config(cls, args.config, args.overrides)


def _read_yaml(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML in {where}: {problem}") from None
    if data is None:  # an empty experiment file means "defaults only"
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"top level of {path} must be a mapping, got {type(data).__name__}")
    return data


def _join(prefix: str, name: object) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _merge(obj: Any, mapping: Mapping[Any, Any], prefix: str, source: str) -> Any:
    """Return a copy of dataclass instance ``obj`` with ``mapping`` merged in."""
    hints = get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj) if f.init]
    changes: dict[str, Any] = {}
    for name, value in mapping.items():
        key = _join(prefix, name)
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
            where = f"on the {CLI}" if source == CLI else f"in {source}"
            raise ConfigError(f"unknown key '{key}' {where}{hint}")
        current = changes.get(name, getattr(obj, name))
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            changes[name] = _merge(current, value, key, source)
        elif isinstance(value, Mapping) and isinstance(current, dict):
            # Merge so that `extra.k=v` adds one entry instead of dropping the others.
            changes[name] = _coerce({**current, **value}, hints[name], key, source)
        else:
            changes[name] = _coerce(value, hints[name], key, source)
    return dataclasses.replace(obj, **changes) if changes else obj


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it to the annotated type."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in _UNIONS:
        if value is None and _NONE in args:
            return None
        options = [a for a in args if a is not _NONE]
        if len(options) == 1:  # Optional[X]: X's own error is the most precise one
            return _coerce(value, options[0], key, source)
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
    elif origin is Literal:
        # Compare types too: True == 1, but `1` is not a valid choice for Literal[True].
        if any(type(value) is type(c) and value == c for c in args):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _merge(tp(), value, key, source)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; learning rates are written that way all the time.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
    elif tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{key}[{i}]", source) if args else v for i, v in enumerate(value)]
    elif tp is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            if not args:
                return tuple(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(
                    _coerce(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, args, strict=True))
                )
    elif tp is dict or origin is dict:
        if isinstance(value, Mapping):
            if not args:
                return dict(value)
            return {
                _coerce(k, args[0], key, source): _coerce(v, args[1], _join(key, k), source) for k, v in value.items()
            }
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r} ({source})")


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in args)
    if origin in _UNIONS:
        return " | ".join(_describe(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _describe(a) for a in args)}]"
    if tp is _NONE:
        return "None"
    if dataclasses.is_dataclass(tp):
        return f"a mapping for {tp.__name__}"
    return getattr(tp, "__name__", str(tp))


def _validate(cfg: Any) -> None:
    """Call ``validate()`` on nested configs first, then on ``cfg`` itself."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _validate(value)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value
