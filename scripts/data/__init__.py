"""Data: dataset layouts -> datalists (:mod:`~scripts.data.layouts`), DICOM input and DICOM SEG output
(:mod:`~scripts.data.dicom`), per-case checks and the skipping dataset/loader (:mod:`~scripts.data.checks`), the
default generated data (:mod:`~scripts.data.default_data`), the importer of real cases into a MONAI Label
datastore (:mod:`~scripts.data.import_studies`). Each is imported on first use (``scripts.data.<module>``)."""

import importlib

__all__ = ["checks", "default_data", "dicom", "import_studies", "layouts"]


def __getattr__(name: str):
    """``scripts.data.<name>``: the submodule, imported on first use."""
    if name in __all__:
        return importlib.import_module(f"scripts.data.{name}")
    raise AttributeError(f"module 'scripts.data' has no attribute {name!r}")
