from __future__ import annotations

from collections.abc import Callable

import pytest

from lafs.errors import ConfigError
from lafs.registry import ENCODERS, HEADS, LANDMARK_SOURCES, REGULARISERS, FactoryRegistry, Registry


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


def test_factory_registry_families() -> None:
    reg = FactoryRegistry("encoder")

    @reg.register("plain")
    def plain(**kwargs: int) -> tuple:
        return ("plain", kwargs)

    @reg.register("timm:")
    def family(member: str, **kwargs: int) -> tuple:
        return (member, kwargs)

    assert reg.get("timm:convnext_atto")(width=2) == ("convnext_atto", {"width": 2})
    assert reg.get("plain")(width=1) == ("plain", {"width": 1})
    assert "timm:anything" in reg and "plain" in reg and "timm:" not in reg and "other:x" not in reg
    assert reg.names() == ["plain", "timm:<name>"]
    with pytest.raises(ConfigError, match=r"^unknown encoder 'other:x' \(known: plain, timm:<name>\)$"):
        reg.get("other:x")
    with pytest.raises(ConfigError, match="unknown encoder 'timm:'"):
        reg.get("timm:")  # a family needs a member


def test_encoders_know_every_kind() -> None:
    import lafs  # noqa: F401  (registers the encoders)

    assert {"lafs_vit_nano_p8_112", "iresnet50", "timm:<name>"} <= set(ENCODERS.names())
    assert all(name in ENCODERS for name in ("lafs_vit_nano_p8_112", "iresnet50", "timm:convnext_atto"))
