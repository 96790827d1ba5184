"""Shared by the tests that run the bundle in subprocesses: the repository root and tiny CPU settings."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_NETWORK = [
    "--network_def#channels",
    "[8,16,32,64]",
    "--roi_size",
    "[32,32,32]",
    "--num_workers",
    "0",
    "--device",
    "cpu",
]
"""Overrides every workflow takes (an override naming no id of the run's configs is an error)."""
TINY = [*TINY_NETWORK, "--num_folds", "3"]
""":data:`TINY_NETWORK` and the folds of training and evaluation (inference has no folds)."""


def tiny_checkpoint(folder: Path) -> Path:
    """Untrained weights of inference.json's network with the :data:`TINY_NETWORK` channels, saved as
    ``folder/model.pt`` (seeded: the same file every time)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": str(ROOT), "network_def#channels": [8, 16, 32, 64]})
    torch.manual_seed(0)
    path = Path(folder) / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path
