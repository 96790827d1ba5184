"""Command-line pieces shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from pathlib import Path


def name_equals_path(text: str) -> tuple[str, Path]:
    """argparse ``type`` of the repeatable ``NAME=PATH`` options (``--arm``, ``--curve``, ``--extra_student``):
    a malformed value is one argparse error line naming the option."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH")
    return name, Path(path)
