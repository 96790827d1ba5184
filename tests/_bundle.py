"""Shared by the tests that run the bundle in subprocesses: the repository root and tiny CPU settings."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CASE = ROOT / "examples" / "TCGA-DU-7294"
"""The bundled real case (BraTS layout; ``TCGA-DU-7294_seg.nii.gz`` is the five-algorithm consensus). Only its
algorithm outputs and the other real case exist only in ``../shared/data``."""
UPENN_CASE = ROOT.parent / "shared" / "data" / "UPENN-GBM-00003_11"
"""The second shared real case (BraTS layout, expert-revised ``UPENN-GBM-00003_11_seg.nii.gz``), outside the
repository."""
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


BUNDLE_PARTS = ("configs", "scripts", "models", "large_files.yml", "LICENSE")
"""What a clone of the bundle holds that its workflows read (docs, tests, apps and benchmarks are not read)."""


def copy_bundle(dest: Path) -> Path:
    """The bundle's :data:`BUNDLE_PARTS` copied into ``dest`` (a fresh clone: no data, no run folders)."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for part in BUNDLE_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dest / part)
    return dest


def large_files(root: Path = ROOT) -> list[dict]:
    """The entries of ``root/large_files.yml``."""
    import yaml

    return yaml.safe_load((Path(root) / "large_files.yml").read_text())["large_files"]


def command(mode: str, bundle_root: Path, data: Path) -> list[str]:
    """The 1-epoch training command line: ``mode`` ``single`` (one process) or ``multi`` (2 processes)."""
    configs = ["configs/train.json"] + (["configs/multi_gpu_train.json"] if mode == "multi" else [])
    launcher = [sys.executable, "-m", "monai.bundle"]
    if mode == "multi":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
        launcher += ["monai.bundle"]
    return launcher + [
        "run", "training", "--meta_file", "configs/metadata.json", "--config_file", str(configs),
        "--bundle_root", str(bundle_root), "--dataset_dir", str(data), *TINY, "--epochs", "1",
    ]  # fmt: skip
