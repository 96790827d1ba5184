"""Python modules of the ResUNet BraTS bundle.

``import scripts`` imports only :mod:`scripts.options`; every other module is imported the first time the configs
(``$scripts.data.layouts.prepare_datalist(...)``) or any code names it (``scripts.<module>``, PEP 562), so a run
loads what it uses and a missing third-party package fails with its own ``ImportError`` where it is needed. The
import layers are listed in ``tests/test_import_layers.py``: :mod:`scripts.conventions` at the bottom, then
:mod:`scripts.io`, the networks, transforms and metrics, the synthetic data, the data layouts and checks, and the
workflow modules on top.

Inside ``python -m monai.bundle run`` the configs' ``$import scripts`` is the first thing resolved, so the import
ends with :func:`scripts.options.check_command_line`: an override that names no id of the configs, or a wrong
value of a boolean or checked id, stops the run with one error line before any component is built.
"""

import importlib

from scripts import options

__all__ = [
    "averaging",
    "casework",
    "conventions",
    "data",
    "degradations",
    "distill",
    "evaluation",
    "example",
    "explain",
    "export",
    "figures",
    "finetune",
    "handlers",
    "inferers",
    "interactive",
    "io",
    "metrics",
    "networks",
    "options",
    "report",
    "robustness",
    "synthetic",
    "transforms",
    "uncertainty",
]


def __getattr__(name: str):
    """``scripts.<name>``: the submodule, imported on first use."""
    if name in __all__:
        return importlib.import_module(f"scripts.{name}")
    raise AttributeError(f"module 'scripts' has no attribute {name!r}")


options.quiet_third_party()
options.check_command_line()
