"""Python modules of the ResUNet BraTS bundle.

``import scripts`` imports the modules the configs call (``$scripts.data.layouts.prepare_datalist(...)``), so a
missing third-party package fails here with its own ``ImportError``. The import layers are listed in
``tests/test_import_layers.py``: :mod:`scripts.conventions` at the bottom, then :mod:`scripts.io`, the networks,
transforms and metrics, the synthetic data, the data layouts and checks, and the workflow modules on top.
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
    "report",
    "robustness",
    "synthetic",
    "transforms",
    "uncertainty",
]
