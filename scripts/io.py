"""Writing files: every output of the bundle goes through :func:`atomic_path` (a temporary name beside the
target, flushed to disk and renamed), so a killed job or a failing case never leaves a half-written file.
On top of it: JSON, text, torch and NIfTI writers, MONAI's ``NibabelWriter`` for ``SaveImaged``, and the
``## `` section merging of generated markdown reports."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from monai.data import NibabelWriter

from scripts.conventions import case_id_from_path

WRITTEN: set[str] = set()
"""Real paths of the files this process completed through :func:`atomic_path` (so a run can tell its own
outputs from those an earlier run left, see ``scripts.data.checks.retire_stale_predictions``)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write to; on success it is flushed to disk and renamed to
    ``path``, on any error it is removed, so ``path`` is either the complete new file or left as it was.

    The temporary name ``.<name>.<pid>.tmp<ext>`` keeps the extension (``.nii.gz`` included) so writers that
    choose the format from it still work, and names the writing process (see :func:`remove_stale_temporaries`).
    Every completed ``path`` is recorded in :data:`WRITTEN`.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{ext}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        WRITTEN.add(os.path.realpath(path))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str, pattern: str) -> list[str]:
    """Remove temporary files ``.<name>.<pid>.tmp<ext>`` (see :func:`atomic_path`) matching ``pattern`` in
    ``folder`` that a killed process left behind (a SIGKILL while writing); files of a live process are kept.
    Returns the removed paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        m = re.search(r"\.(\d+)\.tmp[^/]*$", path)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running: not ours to remove
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def write_text(text: str, path: str | os.PathLike) -> str:
    """Write ``text`` to ``path`` atomically (parent folders created); returns the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return str(path)


def write_json(obj, path: str | os.PathLike, indent: int = 2, **kwargs) -> str:
    """Write ``obj`` as JSON to ``path`` atomically (parent folders created); returns the path."""
    return write_text(json.dumps(obj, indent=indent, **kwargs), path)


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_md5(path: str | os.PathLike) -> str:
    """The md5 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_nifti(array, path: str | os.PathLike, dtype, affine=None) -> str:
    """Write ``array`` as a NIfTI file of ``dtype`` atomically: ``affine`` (default identity, 1 mm RAS) as
    qform and sform, units mm."""
    import nibabel as nib
    import numpy as np

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return str(path)


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes through :func:`atomic_path` (``SaveImaged(writer=...)``)."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def case_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImage`` name formatter: the output is named after the case id, the datalist's ``case_id`` when
    the metadata carry it (``scripts.transforms.CaseIdToMetad``), else the first image file's case id (modality
    suffix removed: ``BraTS20_Validation_001_t1.nii.gz`` gives ``BraTS20_Validation_001.nii.gz``)."""
    metadict = metadict or {}
    case_id = metadict.get("case_id")
    if isinstance(case_id, (list, tuple)):
        case_id = case_id[0]
    if case_id:
        return {"subject": str(case_id), "idx": None}
    source = metadict.get("filename_or_obj", getattr(saver, "_data_index", 0))
    if isinstance(source, (list, tuple)):
        source = source[0]
    return {"subject": case_id_from_path(source), "idx": None}


def _markdown_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` split at its ``## `` headings: the part before the first, and (heading, section) pairs."""
    head, sections = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            sections.append([line.strip(), line])
        elif sections:
            sections[-1][1] += line
        else:
            head.append(line)
    return "".join(head), [(h, s) for h, s in sections]


def replace_markdown_sections(text: str, new: str) -> str:
    """``text`` with each ``## `` section of ``new`` put in place of the section of the same heading, or
    appended when ``text`` has none; everything else in ``text`` is kept as it is."""
    head, sections = _markdown_sections(text)
    replacements = dict(_markdown_sections(new)[1])
    out = [replacements.pop(h, s) for h, s in sections] + list(replacements.values())
    blank_line = [s if s.endswith("\n\n") else s.rstrip("\n") + "\n\n" for s in out[:-1]]  # before each heading
    return head + "".join(blank_line + out[-1:])


def keep_other_markdown_sections(old: str, new: str) -> str:
    """``new`` (a whole generated page) plus the ``## `` sections of ``old`` whose headings ``new`` lacks,
    appended: a report that rewrites a file keeps the sections other scripts wrote into it."""
    own = {h for h, _ in _markdown_sections(new)[1]}
    extra = "".join(s for h, s in _markdown_sections(old)[1] if h not in own)
    return replace_markdown_sections(new, extra)
