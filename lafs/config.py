"""Typed dataclass configs loaded from YAML, with ``key.sub=value`` command-line overrides.

A config is a dataclass whose fields all have defaults; a YAML experiment file is a short diff over those defaults
and overrides are applied after it. Values are checked against the field annotations, and every mistake is a
one-line `ConfigError` naming the full dotted key and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import math
import os
import reprlib
import stat
import textwrap
import tokenize
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lafs.errors import ConfigError
from lafs.files import write_atomic

T = TypeVar("T")

CLI = "command line"
# Values in error messages, shortened: a YAML "billion laughs" of nested aliases must not be formatted in full.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60
_UNIONS = (Union, types.UnionType)
_NONE = type(None)


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key=value`` overrides in order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    try:
        return _load(cls, path, overrides)
    except RecursionError:  # YAML nested thousands deep, in a file or a value: parsing or merging it recurses
        where = f"{path} or the command line" if path is not None else "the command line"
        raise ConfigError(f"the config in {where} is nested too deep to be one") from None


def _load(cls: type[T], path: str | os.PathLike[str] | None, overrides: Sequence[str]) -> T:
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
    """Parse ``[--config PATH] [key=value ...]`` and load the config (`ConfigError` is left to the caller).

    ``--help`` lists every key of ``cls`` with its default and comment (`config_help`).
    """
    parser = argparse.ArgumentParser(
        description=description, epilog=config_help(cls), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", metavar="PATH", default=default_config, help="YAML file over the defaults")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"overrides such as {example_override(cls)} (keys below)"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    return load_config(cls, args.config, args.overrides)


def check_rates(lr: float, min_lr: float, decays: Mapping[str, float], prefix: str = "optim.") -> None:
    """`ConfigError` unless ``lr`` > 0, ``min_lr`` in [0, lr] and every weight decay in ``decays`` >= 0, all finite.

    ``decays`` maps key names (``weight_decay``) to values; ``prefix`` is the section's dotted key. Every training
    stage's optimiser section calls it, so a negative learning rate fails at start-up naming its key.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{prefix}lr must be a finite number > 0, got {lr}")
    if not (math.isfinite(min_lr) and 0 <= min_lr <= lr):
        raise ConfigError(f"{prefix}min_lr must lie in [0, {prefix}lr = {lr}], got {min_lr}")
    for name, value in decays.items():
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{prefix}{name} must be a finite number >= 0, got {value}")


# ----------------------------------------------------------------------------------------------------- help --


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One settable key of a config: dotted name, default (as YAML would spell it) and the field's comment."""

    key: str
    default: str
    comment: str
    nested: bool = False  # a dataclass: its own keys follow, dotted under this one
    scalar: bool = True  # a str, int, float, bool or path (a value one can type after key=)


def config_keys(cls: type) -> list[ConfigKey]:
    """Every key of dataclass ``cls`` in field order, nested dataclasses expanded after a line of their own.

    Defaults are those of ``cls()`` (so ``default_factory`` values show); comments come from the source
    (`field_comments`).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return list(_keys(cls(), ""))


def _keys(obj: Any, prefix: str) -> Iterator[ConfigKey]:
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        key, value = _join(prefix, f.name), getattr(obj, f.name)
        comment = comments.get(f.name, "")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield ConfigKey(key, "", comment, nested=True, scalar=False)
            yield from _keys(value, key)
        else:
            scalar = isinstance(value, (str, int, float, bool, PurePath)) and value is not None
            yield ConfigKey(key, _yaml_value(value), comment, scalar=scalar)


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("...").strip()  # a bare scalar document ends with "..."


def field_comments(cls: type) -> dict[str, str]:
    """``{field name: comment}`` of dataclass ``cls`` and its dataclass bases, read from their source.

    A field's comment is its trailing ``# ...`` comment (on any line of a field spanning several lines), or else the
    comment lines right above it. Fields without either, and classes whose source cannot be read, give none.
    """
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            comments.update(_class_comments(klass))
    return comments


def _class_comments(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, tokenize.TokenError, IndentationError, SyntaxError):
        return {}
    comments: dict[str, str] = {}
    level = depth = 0  # indentation level (the class body is 1) and bracket depth
    line_start = True  # the next token starts a logical line
    above: list[str] = []  # comment lines right above the next statement of the class body
    name: str | None = None  # the field whose statement is being read
    trailing: list[str] = []
    for i, tok in enumerate(tokens):
        kind, text = tok.type, tok.string
        if kind == tokenize.INDENT:
            level += 1
            continue
        if kind == tokenize.DEDENT:
            level -= 1
            continue
        if kind == tokenize.COMMENT:
            body = text.lstrip("#").strip()
            if name is not None:
                trailing.append(body)
            elif line_start and level == 1:
                above.append(body)
            continue
        if kind == tokenize.NL:
            if name is None and line_start and (i == 0 or tokens[i - 1].type != tokenize.COMMENT):
                above = []  # a blank line parts comments from the statement below
            continue
        if kind == tokenize.NEWLINE:
            if name is not None:
                comments[name] = " ".join(trailing) if trailing else " ".join(above)
            name, trailing, above, line_start = None, [], [], True
            continue
        if kind == tokenize.OP:
            depth += text in "([{"
            depth -= text in ")]}"
        if line_start and level == 1 and depth == 0 and kind == tokenize.NAME:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is not None and following.type == tokenize.OP and following.string == ":":
                name = text
        if line_start and level != 1:
            above = []
        line_start = False
    return comments


def example_override(cls: type) -> str:
    """A real ``key=value`` of ``cls`` for help texts: the first nested number key (else the first scalar key) at its
    default value."""
    keys = [k for k in config_keys(cls) if k.scalar]
    if not keys:
        return "key=value"

    def is_number(k: ConfigKey) -> bool:
        return k.default not in ("true", "false") and k.default.lstrip("-").replace(".", "", 1).isdigit()

    for candidates in ([k for k in keys if "." in k.key and is_number(k)], [k for k in keys if is_number(k)], keys):
        if candidates:
            return f"{candidates[0].key}={candidates[0].default}"
    raise AssertionError("unreachable")


def config_help(cls: type) -> str:
    """The key list of ``--help``: one line per key (``key=default`` then its comment), nested keys dotted."""
    keys = config_keys(cls)
    lines = ["config keys (key=default, then why; set any with key=value, nested ones dotted):"]
    width = min(44, max((len(k.key) + 1 + len(k.default) for k in keys), default=0))
    for k in keys:
        left = f"{k.key}.*" if k.nested else f"{k.key}={k.default}"
        lines.append(f"  {left:<{width}}  {k.comment}".rstrip())
    return "\n".join(lines)


MAX_CONFIG_BYTES = 2**20  # the largest shipped config is a few kB; /dev/zero would be read until memory ran out


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a complex key (`? [a, b]`): no config key is one
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, got {type(key).__name__}", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG_BYTES:
            kind = f"{info.st_size:,} bytes" if stat.S_ISREG(info.st_mode) else "not a regular file"
            raise ConfigError(f"config {path}: {kind}; a config is a YAML file of at most {MAX_CONFIG_BYTES:,} bytes")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only, never objects
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
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a hint is a class, never an instance
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
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {_SHORT.repr(value)} ({source})")


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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a hint is a class, never an instance
        return f"a mapping for {tp.__name__}"
    return getattr(tp, "__name__", str(tp))


def _validate(cfg: Any, prefix: str = "") -> None:
    """Call ``validate()`` on nested configs first, then on ``cfg`` itself.

    A section that several configs nest under different keys (the synthetic faces: ``data`` in the demo,
    ``synthetic`` in the training stages) declares ``validate(self, prefix: str = "")`` and gets the dotted key it
    sits at (``"synthetic."``), so its messages name the key the user typed.
    """
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _validate(value, f"{prefix}{field.name}.")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        if "prefix" in inspect.signature(validate).parameters:
            validate(prefix=prefix)
        else:
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
