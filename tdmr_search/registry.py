"""One small registry to create components by name (teachers, transforms, losses, ...).

A registry fills as the module holding its components is imported (``@DATASETS.register(...)``).
The config checks three kinds of name without importing torch: input transforms, projectors and
feature losses. Their registries are declared here with their names, and their factories
register where the components live (``models.transforms``, ``models.heads``,
``pipeline.stages``), so the accepted names are written once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from tdmr_search.errors import ConfigError

__all__ = ["Registry", "closest", "did_you_mean", "TRANSFORMS", "PROJECTORS", "FEATURE_LOSSES"]

T = TypeVar("T")


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``candidates`` that look most like ``name``, closest first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


def did_you_mean(name: object, candidates: Iterable[str]) -> str:
    """The hint that ends an error about an unknown name: `` (did you mean 'x'?)``, or ``""``.

    Args:
        name: The name received.
        candidates: The accepted names; the closest one to ``name`` is suggested.
    """
    hint = closest(str(name), candidates, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


class Registry(Generic[T]):
    """A mapping from a name to a factory, with helpful errors for unknown names.

    Args:
        kind: What the registry holds, used in error messages ("input transform").
        names: The names it accepts, in the order to list them, when they must be known before
            the factories' module is imported; ``register`` then refuses any other name. Empty:
            the registered names, sorted.
    """

    def __init__(self, kind: str, names: Iterable[str] = ()) -> None:
        self.kind = kind
        self._declared = tuple(names)
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self._declared and name not in self._declared:
                raise ValueError(f"{self.kind} {name!r} is not among the names its registry declares "
                                 f"({', '.join(self._declared)}) in tdmr_search/registry.py")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """The accepted names: the declared ones in their order, else the registered ones sorted."""
        return list(self._declared) if self._declared else sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._declared or name in self._factories

    def check(self, name: str, field: str | None = None) -> None:
        """Raise :class:`ConfigError` unless ``name`` is accepted."""
        if name in self:
            return
        where = f"The {field!r} setting" if field else f"The {self.kind}"
        raise ConfigError(f"{where} names an unknown {self.kind} {name!r}; accepted: {', '.join(self.names())}"
                          + did_you_mean(name, self.names()))

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        self.check(name)
        return self._factories[name]

    def create(self, key: str, /, **kwargs: Any) -> T:
        """Build the component registered under ``key`` with ``kwargs``."""
        return self.get(key)(**kwargs)


#: Input transforms in front of the frozen teacher (``models.transforms`` registers them).
TRANSFORMS: Registry[Any] = Registry("input transform", ("resize", "additive", "pad", "scale_pad", "conv"))
#: Projectors into the proxy space (``models.heads`` registers them).
PROJECTORS: Registry[Any] = Registry("projector", ("linear", "mlp"))
#: Distances between student and teacher proxy features (``pipeline.stages`` registers them).
FEATURE_LOSSES: Registry[Any] = Registry("feature loss", ("mse", "cosine", "cka"))
