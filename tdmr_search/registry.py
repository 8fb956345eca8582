"""One small registry to create components by name (teachers, transforms, losses, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from tdmr_search.errors import ConfigError

__all__ = ["Registry", "closest"]

T = TypeVar("T")


def closest(name: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``candidates`` that look most like ``name``."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


class Registry(Generic[T]):
    """A mapping from a name to a factory, with helpful errors for unknown names.

    Args:
        kind: What the registry holds, used in error messages ("input transform").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def check(self, name: str, field: str | None = None) -> None:
        """Raise :class:`ConfigError` unless ``name`` is registered."""
        if name in self._factories:
            return
        where = f"The {field!r} setting" if field else f"The {self.kind}"
        hint = closest(str(name), self.names())
        msg = f"{where} names an unknown {self.kind} {name!r}; accepted: {', '.join(self.names())}"
        if hint:
            msg += f" (did you mean {' or '.join(repr(h) for h in hint)}?)"
        raise ConfigError(msg)

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        self.check(name)
        return self._factories[name]

    def create(self, key: str, /, **kwargs: Any) -> T:
        """Build the component registered under ``key`` with ``kwargs``."""
        return self.get(key)(**kwargs)
