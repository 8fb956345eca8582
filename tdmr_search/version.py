"""The version of tdmr-search: recorded with every result, read by ``pyproject.toml``.

It lives in its own module so that any layer can import it without importing the package root
(which re-exports the pipeline).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
