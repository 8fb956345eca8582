"""Read YAML with limits: plain ``yaml.safe_load`` plus a size cap and an alias cap.

``safe_load`` runs no code, but a few lines of anchors and aliases (a "billion laughs" alias
bomb) expand into billions of values as soon as anything walks the result: an error message,
a JSON copy into the study store. Spaces and configs are small, hand-written files, so these
limits never bind on a real one.
"""

from __future__ import annotations

from typing import Any

import yaml

from tdmr_search.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_ALIASES", "MAX_VALUES", "load_yaml"]

#: Largest YAML text accepted (spaces and configs are a few kB).
MAX_BYTES = 1_000_000
#: Most aliases (``*name``) one document may use.
MAX_ALIASES = 100
#: Most values (scalars, lists and mappings) the document may hold once aliases are expanded.
MAX_VALUES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses documents with many aliases."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _TooBig(f"uses more than {MAX_ALIASES} YAML aliases (*name)")
        return super().compose_node(parent, index)


class _TooBig(Exception):
    pass


def _count_expanded(node: yaml.Node) -> None:
    """Count the values of ``node`` with every alias expanded; raise once past the limit."""
    count, stack = 0, [(node, 0)]
    while stack:
        n, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > 200:
            raise _TooBig(f"expands to more than {MAX_VALUES} values (nested YAML aliases)")
        if isinstance(n, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def load_yaml(text: str, what: str) -> Any:  # noqa: ANN401
    """Parse one YAML document like ``yaml.safe_load``, within the limits above.

    Args:
        text: The YAML text.
        what: What it is, for the error ("The search space 'x.yaml'").

    Raises:
        ConfigError: The text is over a limit.
        yaml.YAMLError: The text is not valid YAML (as ``yaml.safe_load`` raises).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise ConfigError(f"{what} is {size / 1e6:.1f} MB; accepted: YAML files up to {MAX_BYTES / 1e6:g} MB")
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_expanded(node)
        return loader.construct_document(node)
    except _TooBig as err:
        raise ConfigError(f"{what} {err}; accepted: plain YAML with at most {MAX_ALIASES} aliases and "
                          f"{MAX_VALUES} values") from None
    finally:
        loader.dispose()
