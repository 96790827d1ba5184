"""Python modules of the ResUNet BraTS bundle.

Submodules load on first attribute access, so after ``import scripts`` a config expression can call
``scripts.data.layouts.prepare_datalist(...)`` without importing every module up front.
"""

import importlib


def lazy_submodules(package: str):
    """A module ``__getattr__`` (PEP 562) that imports ``<package>.<name>`` on first access."""

    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from e

    return __getattr__


__getattr__ = lazy_submodules(__name__)
