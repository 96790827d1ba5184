"""Shared by the tests that run the bundle in subprocesses: the repository root and tiny CPU settings."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--network_def#channels",
    "[8,16,32,64]",
    "--roi_size",
    "[32,32,32]",
    "--num_workers",
    "0",
    "--num_folds",
    "3",
    "--device",
    "cpu",
]
