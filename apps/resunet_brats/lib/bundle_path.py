"""Importing this module puts the bundle's repository root on ``sys.path`` (at the end, so a bundle given with
``--conf bundle_path`` that MONAI Label put first wins): the app's DICOMweb modules reuse ``scripts.*``."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.append(ROOT)
