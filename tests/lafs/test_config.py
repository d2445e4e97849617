from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from lafs.config import (
    config_keys,
    config_to_dict,
    example_override,
    field_comments,
    load_config,
    parse_cli,
    save_config,
)
from lafs.data.open import DatasetConfig
from lafs.errors import ConfigError, LafsError


# Test configs live at module level: get_type_hints must be able to resolve the (string) annotations.
@dataclass
class Model:
    depth: int = 12
    drop: float = 0.1
    name: Literal["a", "b"] = "a"
    sizes: tuple[int, int] = (112, 112)

    def validate(self) -> None:
        if self.depth < 1:
            raise ConfigError(f"model.depth must be >= 1, got {self.depth}")


@dataclass
class Data:
    root: Path | None = None
    shots: Optional[int] = None  # noqa: UP045 - typing.Optional must keep working
    means: tuple[float, ...] = (0.5, 0.5, 0.5)


@dataclass
class Top:
    name: str = "run"
    tags: list[str] = field(default_factory=list)
    flag: bool = False
    extra: dict[str, int] = field(default_factory=dict)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)

    def validate(self) -> None:
        if self.data.shots is not None and self.data.shots > 10 and self.flag:
            raise ConfigError("flag cannot be combined with data.shots > 10")


@dataclass
class Faces:
    count: int = 1

    def validate(self, prefix: str = "") -> None:  # a section that several configs nest under different keys
        if self.count < 1:
            raise ConfigError(f"{prefix}count must be >= 1, got {self.count}")


@dataclass
class Inner:
    faces: Faces = field(default_factory=Faces)


@dataclass
class Nesting:
    data: Faces = field(default_factory=Faces)
    synthetic: Faces = field(default_factory=Faces)
    inner: Inner = field(default_factory=Inner)


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load_config(Top)
    assert cfg == Top()
    assert isinstance(cfg.model, Model)


def test_yaml_merges_only_given_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "name: exp\nmodel:\n  depth: 6\ndata:\n  root: /data/faces\n")
    cfg = load_config(Top, path)
    assert cfg.name == "exp"
    assert cfg.model == Model(depth=6)
    assert cfg.data.root == Path("/data/faces")
    assert isinstance(cfg.data.root, Path)
    assert cfg.tags == []


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_config(Top, write(tmp_path, "")) == Top()


def test_override_beats_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "name: exp\nmodel:\n  depth: 6\n")
    cfg = load_config(Top, path, ["model.depth=4", "name=foo", "model.depth=3"])
    assert cfg.model.depth == 3
    assert cfg.name == "foo"


def test_override_value_parsing() -> None:
    cfg = load_config(Top, overrides=["flag=true", "tags=[x, y]", "data.shots=4", "data.shots=null", "name=abc"])
    assert cfg.flag is True
    assert cfg.tags == ["x", "y"]
    assert cfg.data.shots is None
    assert cfg.name == "abc"


def test_nested_dataclass_as_mapping() -> None:
    cfg = load_config(Top, overrides=["model={depth: 2, name: b}"])
    assert cfg.model == Model(depth=2, name="b")


def test_nested_dataclass_scalar_is_error() -> None:
    with pytest.raises(ConfigError, match=r"^model: expected a mapping for Model, got 3 \(command line\)$"):
        load_config(Top, overrides=["model=3"])


def test_dict_override_adds_entry() -> None:
    cfg = load_config(Top, overrides=["extra={a: 1}", "extra.b=2"])
    assert cfg.extra == {"a": 1, "b": 2}


def test_int_accepted_for_float() -> None:
    cfg = load_config(Top, overrides=["model.drop=0"])
    assert cfg.model.drop == 0.0
    assert isinstance(cfg.model.drop, float)


def test_exponent_without_dot_is_float() -> None:
    # YAML 1.1 reads 1e-3 as a string.
    assert load_config(Top, overrides=["model.drop=1e-3"]).model.drop == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("flag=1", "flag: expected bool, got 1 (command line)"),
        ("model.depth=true", "model.depth: expected int, got True (command line)"),
        ("model.drop=false", "model.drop: expected float, got False (command line)"),
    ],
)
def test_bool_strictness(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Top, overrides=[override])
    assert str(exc.value) == message


def test_wrong_type_message_exact() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Top, overrides=["model.depth=abc"])
    assert str(exc.value) == "model.depth: expected int, got 'abc' (command line)"
    assert isinstance(exc.value, LafsError)


def test_wrong_type_in_yaml_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "tags: [a, 3]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Top, path)
    assert str(exc.value) == f"tags[1]: expected str, got 3 ({path})"


def test_a_key_given_twice_is_an_error_not_the_last_silently(tmp_path: Path) -> None:
    path = write(tmp_path, "tags: [a]\nmodel:\n  name: a\n  name: b\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Top, path)
    assert str(exc.value) == f"invalid YAML in {path}:4: key 'name' given twice in one mapping"


def test_literal_error_lists_choices() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Top, overrides=["model.name=c"])
    assert str(exc.value) == "model.name: expected one of 'a', 'b', got 'c' (command line)"


def test_unknown_key_in_yaml_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  dpeth: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Top, path)
    assert str(exc.value) == f"unknown key 'model.dpeth' in {path} (did you mean 'model.depth'?)"


def test_unknown_key_on_cli_with_suggestion() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Top, overrides=["modle.depth=3"])
    assert str(exc.value) == "unknown key 'modle' on the command line (did you mean 'model'?)"


def test_unknown_key_without_close_match() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Top, overrides=["model.zzzzzz=3"])
    assert str(exc.value) == "unknown key 'model.zzzzzz' on the command line"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(Top, path)
    assert str(exc.value) == f"cannot read config {path}: No such file or directory"


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  depth: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Top, path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Top, path)


@pytest.mark.parametrize("item", ["model.depth", "=3"])
def test_override_without_key_value(item: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Top, overrides=[item])


def test_optional_fields() -> None:
    cfg = load_config(Top, overrides=["data.root=/x", "data.shots=5"])
    assert cfg.data.root == Path("/x")
    assert cfg.data.shots == 5
    cfg = load_config(Top, overrides=["data.root=null", "data.shots=null"])
    assert cfg.data.root is None
    assert cfg.data.shots is None
    with pytest.raises(ConfigError, match=r"^data\.shots: expected int, got 'many'"):
        load_config(Top, overrides=["data.shots=many"])


def test_tuple_coercion(tmp_path: Path) -> None:
    cfg = load_config(Top, write(tmp_path, "model:\n  sizes: [96, 128]\ndata:\n  means: [0, 0.25]\n"))
    assert cfg.model.sizes == (96, 128)
    assert cfg.data.means == (0.0, 0.25)
    assert isinstance(cfg.data.means, tuple)
    with pytest.raises(ConfigError, match=r"^model\.sizes: expected tuple\[int, int\], got \[1, 2, 3\]"):
        load_config(Top, overrides=["model.sizes=[1, 2, 3]"])
    with pytest.raises(ConfigError, match=r"^model\.sizes\[1\]: expected int"):
        load_config(Top, overrides=["model.sizes=[1, x]"])


def test_validate_called_nested_and_top() -> None:
    with pytest.raises(ConfigError, match=r"model\.depth must be >= 1, got 0"):
        load_config(Top, overrides=["model.depth=0"])
    with pytest.raises(ConfigError, match="flag cannot be combined"):
        load_config(Top, overrides=["flag=true", "data.shots=20"])


@pytest.mark.parametrize("key", ["data.count", "synthetic.count", "inner.faces.count"])
def test_validate_with_prefix_names_the_key_as_typed(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} must be >= 1, got 0$"):
        load_config(Nesting, overrides=[f"{key}=0"])


def test_config_to_dict_is_yaml_safe() -> None:
    cfg = load_config(Top, overrides=["data.root=/x"])
    plain = config_to_dict(cfg)
    assert plain["model"]["sizes"] == [112, 112]
    assert plain["data"]["root"] == "/x"
    yaml.safe_dump(plain)


def test_save_load_round_trip(tmp_path: Path) -> None:
    overrides = ["name=rt", "tags=[a, b]", "flag=true", "extra.k=1", "model.drop=0.25", "model.name=b", "data.root=/d"]
    cfg = load_config(Top, overrides=overrides)
    path = save_config(cfg, tmp_path / "runs" / "r1")
    assert path == tmp_path / "runs" / "r1" / "config.yaml"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    loaded = load_config(Top, path)
    assert loaded == cfg
    assert dataclasses.asdict(loaded) == dataclasses.asdict(cfg)


def test_parse_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "name: exp\nmodel:\n  depth: 6\n")
    cfg = parse_cli(["--config", str(path), "model.depth=2", "data.shots=4"], Top)
    assert (cfg.name, cfg.model.depth, cfg.data.shots) == ("exp", 2, 4)


def test_parse_cli_default_config(tmp_path: Path) -> None:
    path = write(tmp_path, "name: from-default\n")
    assert parse_cli([], Top, default_config=str(path)).name == "from-default"
    assert parse_cli(["name=x"], Top).name == "x"


def test_parse_cli_does_not_catch_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_cli(["model.dpeth=2"], Top)


def test_parse_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--help"], Top, description="demo tool")
    assert exc.value.code == 0
    assert "demo tool" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------- help --


@dataclass
class Commented:
    size: int = 3  # how many
    # The comment above a field counts when the field has no trailing one.
    label: str = "x"
    spans: list[float] = field(
        default_factory=lambda: [1.0, 2.0],
    )  # a default spanning lines
    bare: bool = True

    def validate(self) -> None:  # methods and their comments are not fields
        pass  # not a field either


@dataclass
class Derived(Commented):
    extra: float = 0.5  # added by the subclass
    size: int = 4  # overridden, with a new comment


@dataclass
class Outer:
    top: Path = Path("runs/x")  # where things go
    inner: Derived = field(default_factory=lambda: Derived(label="y"))  # the nested one
    data: DatasetConfig = field(default_factory=DatasetConfig)


def test_field_comments_trailing_above_multiline_and_inherited() -> None:
    assert field_comments(Commented) == {
        "size": "how many",
        "label": "The comment above a field counts when the field has no trailing one.",
        "spans": "a default spanning lines",
        "bare": "",
    }
    derived = field_comments(Derived)
    assert derived["size"] == "overridden, with a new comment" and derived["extra"] == "added by the subclass"
    assert derived["spans"] == "a default spanning lines"


def test_config_keys_expand_nested_dataclasses_with_their_defaults() -> None:
    keys = {k.key: k for k in config_keys(Outer)}
    assert list(keys)[:8] == [
        "top",
        "inner",
        "inner.size",
        "inner.label",
        "inner.spans",
        "inner.bare",
        "inner.extra",
        "data",
    ]
    assert keys["inner"].nested and keys["inner"].comment == "the nested one"
    assert (keys["inner.size"].default, keys["inner.size"].comment) == ("4", "overridden, with a new comment")
    assert keys["inner.label"].default == "y"  # the default_factory's value, not the class default
    assert keys["inner.spans"].default == "[1.0, 2.0]" and not keys["inner.spans"].scalar
    assert keys["top"].default == "runs/x" and keys["data.path"].default == "''"
    every = {f"data.{f.name}" for f in dataclasses.fields(DatasetConfig)}
    assert every <= set(keys) and all(keys[k].comment for k in every)  # every real field has its comment


def test_help_lists_every_key_and_a_real_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--help"], Outer, description="demo tool")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo tool" in out
    assert "inner.spans=[1.0, 2.0]" in out and "a default spanning lines" in out
    assert "data.shots=null" in out and "keep N images per identity" in out
    for f in dataclasses.fields(DatasetConfig):
        assert f"  data.{f.name}=" in out
    example = out.split("overrides such as ")[1].split()[0]
    assert example == "inner.size=4"
    assert parse_cli(["inner.size=7"], Outer).inner.size == 7  # the example's key is a real key
    for cls in (Top, DatasetConfig, Outer):
        cfg = parse_cli([example_override(cls)], cls)  # a real key of each, at its default: loads unchanged
        assert cfg == load_config(cls)
    assert example_override(Top) == "model.depth=12"
