"""Name registries so configs can pick components by string."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lafs.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (default: its ``__name__``)."""

        def decorator(obj: T) -> T:
            key = obj.__name__ if name is None else name  # type: ignore[attr-defined]
            if key in self._items:
                # Silently replacing would make the winner depend on import order.
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names are a `ConfigError`."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


class FactoryRegistry(Registry[Callable[..., Any]]):
    """A registry of factories that also knows families: a factory registered as ``"family:"`` answers every name
    ``family:member``, called with ``member`` as its first argument (``timm:convnext_atto``)."""

    def get(self, name: str) -> Callable[..., Any]:
        family, colon, member = name.partition(":")
        if colon and member and f"{family}:" in self._items:
            return functools.partial(self._items[f"{family}:"], member)
        if colon and not member:  # a family's own key is no name: it needs a member
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return super().get(name)

    def names(self) -> list[str]:
        """Registered names, sorted; a family shows as ``family:<name>``."""
        return sorted(f"{key}<name>" if key.endswith(":") else key for key in self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or name.endswith(":"):
            return False
        family, colon, _ = name.partition(":")
        return name in self._items or bool(colon and f"{family}:" in self._items)


ENCODERS = FactoryRegistry("encoder")
HEADS: Registry[tuple[float, float, float]] = Registry("head")  # default (m1, m2, m3) per named margin head
REGULARISERS: Registry[Callable[..., Any]] = Registry("regulariser")
LANDMARK_SOURCES: Registry[Callable[..., Any]] = Registry("landmark source")
