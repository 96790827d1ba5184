"""Data: dataset layouts -> datalists (:mod:`~scripts.data.layouts`), DICOM input and DICOM SEG output
(:mod:`~scripts.data.dicom`), per-case checks and the skipping dataset/loader (:mod:`~scripts.data.checks`), the
default generated data (:mod:`~scripts.data.default_data`)."""

from scripts.data import checks, default_data, dicom, layouts

__all__ = ["checks", "default_data", "dicom", "layouts"]
