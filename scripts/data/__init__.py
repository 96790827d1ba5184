"""Data: the synthetic BraTS-like generator and dataset layouts -> datalists (submodules load lazily)."""

from scripts import lazy_submodules

__getattr__ = lazy_submodules(__name__)
