"""Python modules of the ResUNet BraTS bundle.

``import scripts`` imports the modules the configs call (``$scripts.data.layouts.prepare_datalist(...)``), so a
missing third-party package fails here with its own ``ImportError``. The import layers are listed in
``tests/test_import_layers.py``: :mod:`scripts.conventions` at the bottom, then :mod:`scripts.io`, the networks,
transforms and metrics, the synthetic data, the data layouts and checks, and the workflow modules on top.

Inside ``python -m monai.bundle run`` the configs' ``$import scripts`` is the first thing resolved, so the import
ends with :func:`scripts.options.check_command_line`: an override that names no id of the configs, or a wrong
value of a boolean or checked id, stops the run with one error line before any component is built.
"""

from scripts import (
    casework,
    conventions,
    data,
    distill,
    evaluation,
    explain,
    figures,
    handlers,
    inferers,
    interactive,
    io,
    metrics,
    networks,
    options,
    report,
    robustness,
    synthetic,
    transforms,
    uncertainty,
)

__all__ = [
    "casework",
    "conventions",
    "data",
    "distill",
    "evaluation",
    "explain",
    "figures",
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

options.quiet_third_party()
options.check_command_line()
