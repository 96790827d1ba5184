"""The default training data: small generated BraTS-like cases in ``data/synthetic``.

Written by an explicit step of the training workflow's ``initialize`` (``configs/train.json``,
``configs/multi_gpu_train.json``), never by data discovery: :mod:`scripts.data.layouts` only lists what exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from scripts.data.dicom import find_dicom_cases
from scripts.data.layouts import nifti_files
from scripts.synthetic.phantom import write_dataset


def is_empty_dataset(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is missing or holds no NIfTI file and no DICOM case."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not nifti_files(folder) and not find_dicom_cases(folder))


def generate_default_data(dataset_dir: str | os.PathLike, default_dir: str | os.PathLike, num_cases: int, seed: int):
    """Fill the default data folder with ``num_cases`` generated cases (:func:`scripts.synthetic.phantom.write_dataset`)
    when the run's ``dataset_dir`` is that folder and it is missing or empty.

    Any other ``dataset_dir`` is left alone (a misspelt path never gives results on generated data: listing it
    reports it), and so is a default folder that holds data. In a multi-process run (``torch.distributed``
    initialised, e.g. ``configs/multi_gpu_train.json``) only rank 0 decides and writes, and every rank waits at a
    barrier, so no rank lists a case whose files are still being written.

    Args:
        dataset_dir: the run's data folder (``--dataset_dir``).
        default_dir: the default data folder (``<bundle_root>/data/synthetic``).
        num_cases: how many cases to generate.
        seed: the generator's seed (the same seed gives the same files).

    Returns:
        True when this process generated the cases, False otherwise.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    is_default = os.path.realpath(dataset_dir) == os.path.realpath(default_dir)
    write = is_default and (not distributed or dist.get_rank() == 0) and is_empty_dataset(dataset_dir)
    if write:
        write_dataset(str(dataset_dir), num_cases=int(num_cases), seed=int(seed))
    if distributed and is_default:
        dist.barrier()
    return write
