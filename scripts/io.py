"""Writing files: every output of the bundle goes through :func:`atomic_path` (a temporary name beside the
target, flushed to disk and renamed), so a killed job or a failing case never leaves a half-written file.
On top of it: JSON, text, torch and NIfTI writers and MONAI's ``NibabelWriter`` for ``SaveImaged``."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from monai.data import NibabelWriter

from scripts.conventions import case_id_from_path

logger = logging.getLogger(__name__)

WRITTEN: set[str] = set()
"""Real paths of the files this process completed through :func:`atomic_path` (so a run can tell its own
outputs from those an earlier run left, see ``scripts.data.checks.retire_stale_predictions``)."""

INPUTS: set[str] = set()
"""Real paths of the input files of the running workflow (``scripts.data.checks.check_outputs_spare_inputs``
adds them): :func:`atomic_path` refuses to replace any of them, whatever the output's name."""

FAILED_WRITES: list[dict] = []
"""``{"case_id", "file", "problem"}`` of every prediction :class:`AtomicNibabelWriter` could not write (a folder
at its path, a name too long); ``scripts.data.checks.SkippingDataLoader`` counts them as failed cases."""

NAME_MAX = 255
"""Most bytes one file name may take (ext4, XFS, APFS, NTFS): the temporary names stay within it."""
TEMP_MARKER = "tmp-resunet"
"""The mark in every temporary name of :func:`atomic_path`: ``.<name>.<pid>.tmp-resunet<ext>``. Only names of
exactly this form are ever removed as stale (:func:`remove_stale_temporaries`), never a user's ``.x.123.tmp``."""
_TEMP_NAME = re.compile(rf"^\.(?P<base>.+)\.(?P<pid>\d+)\.{re.escape(TEMP_MARKER)}(?P<ext>\.nii\.gz|\.[^.]{{1,16}})?$")
_MAX_EXT = 16


class InputOverwriteError(FileExistsError):
    """An output would replace an input file of the running workflow (see :data:`INPUTS`)."""


def _extension(name: str) -> str:
    """The extension a writer chooses the format from (``.nii.gz`` included); none when it is unusually long."""
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    return ext if len(ext.encode()) <= _MAX_EXT else ""


def _truncate_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding takes at most ``limit`` bytes."""
    data = text.encode("utf-8", "surrogateescape")[:limit]
    return data.decode("utf-8", "ignore")


def temporary_name(name: str, pid: int | None = None) -> str:
    """The temporary file name :func:`atomic_path` writes ``name`` under: ``.<name>.<pid>.tmp-resunet<ext>``,
    within :data:`NAME_MAX` bytes. A longer ``name`` (a case id of 230+ characters) is cut and followed by
    ``~`` and 12 hex digits of its SHA-1, so two long names never share a temporary name."""
    pid = os.getpid() if pid is None else int(pid)
    suffix = f".{pid}.{TEMP_MARKER}{_extension(name)}"
    base = name
    if len(f".{base}{suffix}".encode("utf-8", "surrogateescape")) > NAME_MAX:
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        room = NAME_MAX - len(suffix.encode()) - len(digest) - 2  # the leading "." and "~"
        base = f"{_truncate_bytes(name, room)}~{digest}"
    return f".{base}{suffix}"


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is a temporary name :func:`atomic_path` gives (``.<name>.<pid>.tmp-resunet<ext>``)."""
    return _TEMP_NAME.match(name) is not None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write to; on success it is flushed to disk and renamed to
    ``path``, on any error it is removed, so ``path`` is either the complete new file or left as it was.

    The temporary name (:func:`temporary_name`: ``.<name>.<pid>.tmp-resunet<ext>``, within :data:`NAME_MAX`
    bytes) keeps the extension (``.nii.gz`` included) so writers that choose the format from it still work, and
    names the writing process (see :func:`remove_stale_temporaries`). Every completed ``path`` is recorded in
    :data:`WRITTEN`.

    Raises:
        InputOverwriteError: ``path`` is an input file of the running workflow (:data:`INPUTS`).
        IsADirectoryError: a folder is at ``path``.
    """
    path = os.fspath(path)
    if os.path.realpath(path) in INPUTS:
        raise InputOverwriteError(f"{path}: an input file of this run; it is never overwritten")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a folder is in the way of the output file")
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, temporary_name(name))
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        WRITTEN.add(os.path.realpath(path))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_running(pid: int) -> bool:
    """Whether a process ``pid`` runs (or may run: one of another user's); this process counts as not running."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or a number beyond any pid
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str, pattern: str) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` (``.<name>.<pid>.tmp-resunet<ext>``, see
    :func:`is_temporary_name`) matching ``pattern`` in ``folder`` that a killed process left behind (a SIGKILL
    while writing); files of a live process are kept, and so is every file not named exactly so (a user's
    ``.thesis.20240101.tmp``). Returns the removed paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        m = _TEMP_NAME.match(os.path.basename(path))
        if not m or not os.path.isfile(path) or _is_running(int(m.group("pid"))):
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
    """``NibabelWriter`` that writes through :func:`atomic_path` (``SaveImaged(writer=...)``, the prediction of
    one case per call). With ``verbose`` (``SaveImaged(print_log=True)``) it logs the final path once written,
    never the temporary name.

    A prediction that cannot be written (a folder at its path, a name longer than the file system allows, any
    other ``OSError``) is that case's failure, not the batch's: it is logged, recorded in
    :data:`FAILED_WRITES` (which ``scripts.data.checks.SkippingDataLoader`` reports with the run's other failed
    cases) and the next case goes on.
    """

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        try:
            with atomic_path(filename) as tmp:
                super().write(tmp, verbose=False, **obj_kwargs)  # MONAI would log the temporary name
            if verbose:
                logger.info("wrote %s", os.fspath(filename))
        except OSError as e:
            name = os.path.basename(os.fspath(filename))
            case_id = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name
            problem = f"cannot write the prediction ({_os_error(e)})"
            FAILED_WRITES.append({"case_id": case_id, "file": os.fspath(filename), "problem": problem})
            logger.warning("case skipped: %s: %s: %s", case_id, os.fspath(filename), problem)


def _os_error(e: OSError) -> str:
    """``IsADirectoryError: a folder is in the way``: an ``OSError`` in one line, without repeating the path."""
    if isinstance(e, IsADirectoryError):
        return "IsADirectoryError: a folder is in the way of the file"
    if isinstance(e, InputOverwriteError):
        return "InputOverwriteError: an input file of this run is at this path, it is never overwritten"
    return f"{type(e).__name__}: {e.strerror or e}"


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


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
"""Executable names of a headless Chromium (or Chrome): the report's PDF and the OHIF viewer check use it."""


def find_chromium() -> str | None:
    """The headless Chromium (or Chrome) executable on the PATH, ``None`` when there is none."""
    return next((exe for exe in map(shutil.which, CHROMIUM_NAMES) if exe), None)
