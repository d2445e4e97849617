from __future__ import annotations

from collections.abc import Callable

import pytest

from lafs.errors import ConfigError
from lafs.registry import ENCODERS, HEADS, LANDMARK_SOURCES, REGULARISERS, Registry


def test_register_get_names() -> None:
    reg: Registry[Callable[[], int]] = Registry("encoder")

    @reg.register("beta")
    def b() -> int:
        return 2

    @reg.register()
    def alpha() -> int:
        return 1

    assert reg.get("beta") is b
    assert reg.get("alpha") is alpha  # default name is __name__
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg
    assert "b" not in reg


def test_register_returns_object_unchanged() -> None:
    reg: Registry[type] = Registry("head")

    @reg.register()
    class Linear:
        pass

    assert reg.get("Linear") is Linear


def test_duplicate_name_raises() -> None:
    reg: Registry[object] = Registry("head")
    reg.register("x")(object())
    with pytest.raises(ValueError, match="head 'x' is already registered"):
        reg.register("x")(object())


def test_unknown_name_lists_known() -> None:
    reg: Registry[int] = Registry("encoder")
    for i, name in enumerate(["c", "a", "b"]):
        reg.register(name)(i)
    with pytest.raises(ConfigError) as exc:
        reg.get("x")
    assert str(exc.value) == "unknown encoder 'x' (known: a, b, c)"


def test_unknown_name_in_empty_registry() -> None:
    with pytest.raises(ConfigError, match=r"^unknown landmark source 'x' \(known: none\)$"):
        Registry("landmark source").get("x")


def test_module_registries() -> None:
    assert [r.kind for r in (ENCODERS, HEADS, REGULARISERS, LANDMARK_SOURCES)] == [
        "encoder",
        "head",
        "regulariser",
        "landmark source",
    ]
