"""Data: dataset layouts -> datalists (:mod:`~scripts.data.layouts`), DICOM input and DICOM SEG output
(:mod:`~scripts.data.dicom`), per-case checks and the skipping dataset/loader (:mod:`~scripts.data.checks`)."""

from scripts.data import checks, dicom, layouts

__all__ = ["checks", "dicom", "layouts"]
