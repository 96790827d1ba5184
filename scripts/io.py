"""Writing results: atomic file writes and output files named after the case id."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from monai.data import NibabelWriter

from scripts.data.layouts import case_id_from_path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write to; on success it is renamed to ``path``, on any
    error it is removed, so ``path`` is either the complete new file or left as it was.

    The temporary name keeps the extension (``.nii.gz`` included) so writers that choose the format from
    it still work.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes through :func:`atomic_path`, so a killed job or a failing case never
    leaves a half-written NIfTI behind."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def case_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImage`` name formatter: the output is named after the case id (modality suffix removed), so
    ``BraTS20_Validation_001_t1.nii.gz`` gives ``BraTS20_Validation_001.nii.gz``."""
    source = (metadict or {}).get("filename_or_obj", getattr(saver, "_data_index", 0))
    if isinstance(source, (list, tuple)):
        source = source[0]
    return {"subject": case_id_from_path(source), "idx": None}
