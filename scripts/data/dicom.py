"""DICOM input: cases given as one DICOM series folder per modality, and NIfTI -> DICOM series export.

A DICOM case is a folder with one sub-folder per modality, each holding one MR series (one file per
slice)::

    case_001/t1/IM0001.dcm ...   case_001/t1ce/...   case_001/t2/...   case_001/flair/...

Sub-folder names are matched case-insensitively, ignoring ``-``, ``_`` and spaces, with the usual aliases
(``t1n``/``t1w`` -> T1, ``t1c``/``t1gd``/``t1post`` -> T1ce, ``t2w`` -> T2, ``t2f``/``t2-flair`` -> FLAIR).
:func:`find_dicom_cases` turns them into datalist items whose ``image`` is the four series folders in the
bundle's channel order; MONAI's ``ITKReader`` reads a folder as one series (sorted by slice position), so
``LoadImaged(ensure_channel_first=True)`` gives the same 4 x H x W x D array and RAS affine as the NIfTI
files would. (``LoadImaged`` without ``reader`` already picks ``ITKReader`` for folders: it is the only
default reader that accepts a path without a NIfTI/NumPy/image suffix.)

:func:`nifti_to_dicom_series` writes a NIfTI volume as such a series (SimpleITK/GDCM, MR Image Storage with
exact int16 pixels for integer data, one geometry per slice), :func:`nifti_case_to_dicom` a whole case with shared study and
frame-of-reference UIDs. The geometry is taken from the NIfTI affine exactly as nibabel (and hence MONAI)
reads it, so a round trip keeps the voxel grid in world coordinates.

:func:`label_to_dicom_seg` / :func:`dicom_seg_to_label` (optional, need ``highdicom``) write a BraTS label map
on a series' grid (e.g. the bundle's prediction for a DICOM case) as a DICOM SEG object referencing that
series, and read it back.
"""

from __future__ import annotations

import contextlib
import datetime
import locale
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scripts.conventions import BRATS2020_LABELS, CLASS_COLOURS, CLASS_DESCRIPTIONS, MODALITIES, modality_of

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DICOM_READER = "ITKReader"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextlib.contextmanager
def keep_locale():
    """Restore the process locale afterwards: GDCM (ITK/SimpleITK DICOM writing) switches the whole process
    to the "C" locale, after which Python's ``open()`` defaults to ASCII and writing non-ASCII text fails."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def new_uid() -> str:
    """A fresh globally unique DICOM UID (``2.25.<UUID as an integer>``, at most 44 characters)."""
    return f"2.25.{uuid.uuid4().int}"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm`` file or any file with the ``DICM`` magic after the 128-byte preamble."""
    path = Path(path)
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_series_dir(path: str | os.PathLike, probe: int = 8) -> bool:
    """True when ``path`` is a folder whose files (the first ``probe`` of them, sorted) include DICOM files."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return any(is_dicom_file(p) for p in files[:probe])


def _modality_dirs(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and not sub.name.startswith("."):
            mod = modality_of(sub.name)
            if mod is not None and is_dicom_series_dir(sub):
                found.setdefault(mod, []).append(sub)
    return found


def find_dicom_cases(root: str | os.PathLike) -> list[dict]:
    """All DICOM cases at or under ``root``, sorted by case id.

    A case is a folder with one DICOM series sub-folder per modality (see the module docstring); the item is
    ``{"case_id": <case folder name>, "image": [t1_dir, t1ce_dir, t2_dir, flair_dir], "reader": "ITKReader"}``.
    Raises ``FileNotFoundError`` naming the case when a folder has some modality series but not all four,
    and ``ValueError`` when two sub-folders map to the same modality.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    cases = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        folder = Path(dirpath)
        found = _modality_dirs(folder)
        if not found:
            continue
        dup = {m: [str(p) for p in ps] for m, ps in found.items() if len(ps) > 1}
        if dup:
            raise ValueError(f"case {folder.name}: more than one series folder per modality {dup}")
        missing = [m for m in MODALITIES if m not in found]
        if missing:
            if len(found) >= 2:
                raise FileNotFoundError(
                    f"case {folder.name} ({folder}): missing DICOM series folder(s) for {missing} "
                    f"(found {sorted(found)})"
                )
            continue
        cases.append({"case_id": folder.name, "image": [str(found[m][0]) for m in MODALITIES], "reader": DICOM_READER})
        dirnames[:] = [d for d in dirnames if modality_of(d) is None]  # the series folders are not cases
    return sorted(cases, key=lambda c: c["case_id"])


# ----------------------------------------------------------------------------------------------
# series geometry: one evenly spaced voxel grid per folder, or an error naming the folder
# ----------------------------------------------------------------------------------------------
SLICE_TOLERANCE = 0.01
"""Largest distance, as a fraction of the slice spacing, of a slice from the evenly spaced grid that ITK reads a
series onto (first to last slice, ``(last - first) / (n - 1)`` apart): more is a missing, repeated or misplaced
slice, which ITK only warns about on stderr while every slice after it lands in the wrong place."""


class DicomSeriesError(ValueError):
    """A DICOM series folder that does not make one evenly spaced voxel grid: ``path`` (the folder or file at
    fault) and ``problem`` (what is wrong, with the values)."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class SeriesGrid(NamedTuple):
    """The voxel grid of a DICOM series as MONAI's ``ITKReader`` loads it: ``shape`` (columns, rows, slices),
    ``spacing`` (mm, same order), ``origin`` (RAS mm of the first voxel) and the RAS ``affine``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    affine: np.ndarray


def _slice_header(path: Path) -> dict:
    """Geometry of one DICOM file (SimpleITK/GDCM, header only): series UID, size, pixel spacing, LPS origin and
    direction cosines (columns: row, column and slice-normal directions)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with keep_locale():
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise DicomSeriesError(path, f"cannot read the DICOM header ({_last_line(e)})") from None
    series = reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else ""
    dim = reader.GetDimension()
    return {
        "path": path,
        "series": series,
        "size": tuple(reader.GetSize()[:2]),
        "spacing": np.asarray(reader.GetSpacing()[:2], dtype=np.float64),
        "origin": np.asarray(reader.GetOrigin(), dtype=np.float64),
        "direction": np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim),
    }


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def mm_str(values) -> str:
    """``(0.5, 1, 2.25)`` for messages: millimetres to 4 significant digits."""
    return "(" + ", ".join(f"{float(v):.4g}" for v in np.atleast_1d(values)) + ")"


def _check_same_plane(slices: list[dict], folder: Path) -> None:
    """``DicomSeriesError`` unless all slices share one series UID, image size, pixel spacing and orientation."""
    first = slices[0]
    uids = sorted({s["series"] for s in slices})
    if len(uids) > 1:
        raise DicomSeriesError(folder, f"holds {len(uids)} DICOM series ({', '.join(uids)}); keep one per folder")
    if first["direction"].shape != (3, 3):
        raise DicomSeriesError(first["path"], "no 3D slice geometry (ImagePositionPatient/ImageOrientationPatient)")
    for s in slices[1:]:
        if s["size"] != first["size"] or not np.allclose(s["spacing"], first["spacing"], atol=1e-4):
            raise DicomSeriesError(
                folder,
                f"slices of different sizes: {s['path'].name} is {s['size'][0]} x {s['size'][1]} pixels of "
                f"{mm_str(s['spacing'])} mm, {first['path'].name} {first['size'][0]} x {first['size'][1]} of "
                f"{mm_str(first['spacing'])} mm",
            )
        if not np.allclose(s["direction"][:, :2], first["direction"][:, :2], atol=1e-4):
            raise DicomSeriesError(
                folder, f"slices of different orientations: {s['path'].name} and {first['path'].name}"
            )


def _check_even_positions(slices: list[dict], normal: np.ndarray, folder: Path) -> None:
    """``DicomSeriesError`` naming the gap unless the slices (sorted along ``normal``) lie on one evenly spaced
    line along the normal (within :data:`SLICE_TOLERANCE` of the spacing)."""
    offsets = np.array([s["origin"] - slices[0]["origin"] for s in slices])
    depth = offsets @ normal
    gaps = np.diff(depth)
    names = [s["path"].name for s in slices]
    typical = float(np.median(gaps))
    tol = SLICE_TOLERANCE * max(typical, 1e-3)
    for k in np.flatnonzero(gaps <= tol)[:1]:
        raise DicomSeriesError(
            folder,
            f"{names[k]} and {names[k + 1]} lie at the same slice position "
            f"({float(slices[k]['origin'] @ normal):.4g} mm along the slice normal)",
        )
    sideways = np.linalg.norm(offsets - np.outer(depth, normal), axis=1)
    for k in np.flatnonzero(sideways > tol)[:1]:
        raise DicomSeriesError(
            folder,
            f"{names[k]} is {sideways[k]:.4g} mm off the line of slices through {names[0]} along the slice normal "
            "(a tilted or sheared stack, which one voxel grid cannot hold)",
        )
    step = (depth[-1] - depth[0]) / (len(slices) - 1)
    misplaced = float(np.abs(depth - depth[0] - step * np.arange(len(slices))).max())
    if misplaced > SLICE_TOLERANCE * step:
        k = int(np.argmax(np.abs(gaps - typical)))
        raise DicomSeriesError(
            folder,
            f"uneven slice positions: {names[k]} and {names[k + 1]} are {gaps[k]:.4g} mm apart, the other slices "
            f"{typical:.4g} mm ({len(slices)} slices; a missing slice?); read onto one even {step:.4g} mm grid, "
            f"slices would be misplaced by up to {misplaced:.3g} mm",
        )


def series_grid(folder: str | os.PathLike) -> SeriesGrid:
    """The voxel grid of the DICOM series in ``folder``, from its slice headers (no pixel data read).

    Raises :class:`DicomSeriesError` naming the folder (or file) and the values when the folder holds no DICOM
    file, more than one series, slices of different sizes or orientations, two slices at one position, or slice
    positions that are not evenly spaced along the slice normal (a missing slice): ITK would read such a series
    onto one even grid with only a warning on stderr, misplacing slices.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if is_dicom_file(p)) if folder.is_dir() else []
    if not files:
        raise DicomSeriesError(folder, "no DICOM files (not a DICOM series folder)")
    slices = [_slice_header(p) for p in files]
    _check_same_plane(slices, folder)
    direction = slices[0]["direction"]
    normal = np.cross(direction[:, 0], direction[:, 1])
    slices.sort(key=lambda s: float(s["origin"] @ normal))
    if len(slices) > 1:
        _check_even_positions(slices, normal, folder)
        step = (slices[-1]["origin"] - slices[0]["origin"]) / (len(slices) - 1)
    else:
        step = normal
    lps = np.eye(4)
    lps[:3, 0] = direction[:, 0] * slices[0]["spacing"][0]
    lps[:3, 1] = direction[:, 1] * slices[0]["spacing"][1]
    lps[:3, 2] = step
    lps[:3, 3] = slices[0]["origin"]
    affine = _LPS @ lps
    shape = (*slices[0]["size"], len(slices))
    spacing = (*slices[0]["spacing"].tolist(), float(np.linalg.norm(step)))
    return SeriesGrid(shape, spacing, tuple(affine[:3, 3].tolist()), affine)


# ----------------------------------------------------------------------------------------------
# NIfTI -> DICOM series
# ----------------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in (12, 10, 8, 6):
        s = f"{float(value):.{digits}g}"
        if len(s) <= 16:
            return "0" if s == "-0" else s
    raise ValueError(f"{value} does not fit a DICOM decimal string")


def _to_stored(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(pixel array to hand to GDCM, slope, intercept).

    Integer data in the int16 range go as int16 and are stored exactly (slope 1, intercept 0). Anything else
    goes as float64 with a slope/intercept that maps the data range onto 0..65535; GDCM then stores
    ``round((value - intercept) / slope)`` as uint16 pixels, i.e. quantised to 1/65535 of the range.
    """
    data = np.asarray(data)
    finite = np.nan_to_num(data.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if np.array_equal(finite, np.round(finite)) and lo >= -32768 and hi <= 32767:
        return finite.astype(np.int16), 1.0, 0.0
    slope = float(_ds((hi - lo) / 65535.0)) if hi > lo else 1.0
    return finite, slope, float(_ds(lo))


def nifti_to_dicom_series(
    nifti_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    series_description: str | None = None,
    series_number: int = 1,
    patient_id: str = "ANONYMOUS",
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_instance_uid: str | None = None,
    channel: int | None = None,
    modality: str = "MR",
    file_prefix: str = "IM",
) -> list[str]:
    """Write a 3D NIfTI volume (or one ``channel`` of a 4D one) as a DICOM series, one file per slice.

    The slices are the volume's third array axis. Integer data in the int16 range are stored exactly as int16
    pixels in MR Image Storage instances; other data are quantised to uint16 (1/65535 of their range) with
    rescale slope/intercept, which GDCM writes as single-frame Enhanced MR instances. Every file carries the
    full slice geometry: ImagePositionPatient from the NIfTI affine (as nibabel reads it, converted from RAS to DICOM's
    LPS), ImageOrientationPatient, PixelSpacing, SliceThickness and SpacingBetweenSlices. Pass the same
    ``study_instance_uid`` / ``frame_of_reference_uid`` for the series of one case (see
    :func:`nifti_case_to_dicom`); new UIDs are generated otherwise.

    Returns the written file paths in slice order. Raises ``ValueError`` for sheared affines (not
    representable as a DICOM series) and for arrays that are not 3D after picking ``channel``.
    """
    nifti_path, out_dir = Path(nifti_path), Path(out_dir)
    data, affine = _read_volume(nifti_path, channel)
    stored, slope, intercept = _to_stored(data)
    volume, direction, spacing = _sitk_volume(stored, affine, nifti_path)
    uids = {
        "0020|000d": study_instance_uid or new_uid(),
        "0020|000e": series_instance_uid or new_uid(),
        "0020|0052": frame_of_reference_uid or new_uid(),
    }
    common = _series_tags(
        uids,
        series_description or _strip_ext(nifti_path.name),
        series_number,
        patient_id,
        patient_name,
        modality,
        direction,
        spacing,
        (slope, intercept),
    )
    if stored.dtype.kind == "f":  # GDCM rescales the float values to unsigned 16-bit stored pixels
        common.update({"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "0"})
    return _write_slices(volume, common, direction, out_dir, file_prefix)


def _read_volume(nifti_path: Path, channel: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(3D data, affine) of a NIfTI file, or of its ``channel`` for a 4D one."""
    import nibabel as nib

    img = nib.load(str(nifti_path))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and channel is not None:
        data = data[..., channel]
    elif data.ndim == 5 and channel is not None and data.shape[3] == 1:
        data = data[:, :, :, 0, channel]
    if data.ndim != 3:
        raise ValueError(f"{nifti_path}: expected a 3D volume (or a 4D one with channel=...), got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _sitk_volume(stored: np.ndarray, affine: np.ndarray, nifti_path: Path):
    """(SimpleITK image in LPS, direction cosines, spacing) of the stored pixels; ``ValueError`` for degenerate
    or sheared affines."""
    import SimpleITK as sitk

    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"{nifti_path}: degenerate affine {affine.tolist()}")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(f"{nifti_path}: the affine is sheared, which a DICOM series cannot represent")
    volume = sitk.GetImageFromArray(np.ascontiguousarray(stored.transpose(2, 1, 0)))  # (z, y, x) for SimpleITK
    volume.SetSpacing([float(s) for s in spacing])
    volume.SetOrigin([float(o) for o in lps[:3, 3]])
    volume.SetDirection([float(v) for v in direction.ravel()])
    return volume, direction, spacing


def _series_tags(
    uids: dict,
    description: str,
    series_number: int,
    patient_id: str,
    patient_name,
    modality: str,
    direction,
    spacing,
    rescale,
) -> dict[str, str]:
    """The DICOM tags every slice of the series shares (``uids``: study, series, frame of reference)."""
    slope, intercept = rescale
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0016": MR_IMAGE_STORAGE,
        "0008|0020": date,
        "0008|0021": date,
        "0008|0030": time,
        "0008|0031": time,
        "0008|0060": modality,
        "0008|103e": description[:64],
        "0010|0010": _person_name(patient_name or patient_id),
        "0010|0020": patient_id[:64],
        "0008|0070": "",
        "0018|0020": "RM",
        "0018|0021": "NONE",
        "0018|0022": "",
        "0018|0023": "3D",
        "0018|0080": "",
        "0018|0081": "",
        "0018|0091": "",
        "0018|5100": "HFS",
        "0020|1040": "",
        "0018|0050": _ds(spacing[2]),
        "0018|0088": _ds(spacing[2]),
        **uids,
        "0020|0011": str(int(series_number)),
        "0020|0037": "\\".join(_ds(v) for v in (*direction[:, 0], *direction[:, 1])),
        "0028|1052": _ds(intercept),
        "0028|1053": _ds(slope),
        "0028|1054": "US",
    }


def _write_slices(volume, common: dict, direction, out_dir: Path, file_prefix: str) -> list[str]:
    """One DICOM file per slice of ``volume`` with the ``common`` tags plus its own position and UID."""
    import SimpleITK as sitk

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # use the UIDs set here, not fresh ones per file
    paths = []
    with keep_locale():
        for k in range(volume.GetDepth()):
            sl = volume[:, :, k]
            for tag, value in common.items():
                sl.SetMetaData(tag, value)
            position = volume.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0008|0018", new_uid())
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0020|0032", "\\".join(_ds(v) for v in position))
            sl.SetMetaData("0020|1041", _ds(float(np.dot(position, np.cross(direction[:, 0], direction[:, 1])))))
            path = out_dir / f"{file_prefix}{k + 1:04d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(sl)
            paths.append(str(path))
    return paths


def nifti_case_to_dicom(
    images: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    case_dir: str | os.PathLike,
    patient_id: str | None = None,
    channel_of: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Write one case's modalities as DICOM series folders ``case_dir/<modality>/`` sharing one study and one
    frame of reference, so :func:`find_dicom_cases` finds the case.

    ``images``: ``{"t1": path, "t1ce": ..., "t2": ..., "flair": ...}`` or the four paths in that order (a
    datalist item's ``image`` list); one 4D path for all four with ``channel_of`` giving each modality's
    channel (e.g. MSD: ``{"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}``). Returns ``{modality: series folder}``.
    """
    case_dir = Path(case_dir)
    if isinstance(images, (str, os.PathLike)):
        if channel_of is None:
            raise ValueError("a single 4D image needs channel_of={modality: channel}")
        images = {m: images for m in channel_of}
    elif not isinstance(images, Mapping):
        images = dict(zip(MODALITIES, images))
    study, frame = new_uid(), new_uid()
    out = {}
    for number, (mod, path) in enumerate(images.items(), start=1):
        out[mod] = str(case_dir / mod)
        nifti_to_dicom_series(
            path,
            out[mod],
            series_description=mod.upper(),
            series_number=number,
            patient_id=patient_id or case_dir.name,
            study_instance_uid=study,
            frame_of_reference_uid=frame,
            channel=None if channel_of is None else channel_of[mod],
        )
    return out


def _person_name(name: str) -> str:
    """A DICOM person name: ``Family^Given``; a single component gets a trailing ``^`` (unambiguous)."""
    name = str(name)[:63]
    return name if "^" in name else name + "^"


def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


# ----------------------------------------------------------------------------------------------
# DICOM SEG (optional: needs highdicom)
# ----------------------------------------------------------------------------------------------
SEGMENT_NAMES = CLASS_DESCRIPTIONS
"""DICOM SEG segment labels, in the order of a label-value triple (``scripts.conventions.CLASS_DESCRIPTIONS``)."""


def series_datasets(series_dir: str | os.PathLike):
    """The series' headers (pydicom, no pixel data), sorted along the slice normal as ITK sorts them."""
    import pydicom

    files = [p for p in sorted(Path(series_dir).iterdir()) if is_dicom_file(p)]
    if not files:
        raise FileNotFoundError(f"{series_dir}: no DICOM files")
    datasets = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))))


def series_affine(datasets) -> np.ndarray:
    """The RAS affine of a sorted single-frame series, for arrays indexed (column, row, slice) as MONAI's
    ITKReader returns them."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    first = np.asarray(datasets[0].ImagePositionPatient, dtype=np.float64)
    if len(datasets) > 1:
        step = (np.asarray(datasets[-1].ImagePositionPatient, dtype=np.float64) - first) / (len(datasets) - 1)
    else:
        step = np.cross(iop[:3], iop[3:]) * float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first
    return _LPS @ lps


def onto_series_grid(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape) -> np.ndarray:
    """``data`` (with ``affine``) reoriented onto the series grid; ``ValueError`` when the grids differ by more
    than axis flips/permutations."""
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.io_orientation(target_affine))
    out = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if out.shape != tuple(target_shape) or not np.allclose(new_affine, target_affine, atol=1e-3):
        raise ValueError(
            f"the label (shape {data.shape}) is not on the voxel grid of the DICOM series (shape {tuple(target_shape)}); "
            "save the prediction from the DICOM-loaded image without resampling"
        )
    return out


def label_to_dicom_seg(
    label: str | os.PathLike | np.ndarray,
    series_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    labels: Sequence[int] = BRATS2020_LABELS,
    series_description: str = "Brain tumour segmentation",
    algorithm_name: str = "brats_resunet",
    algorithm_version: str = "1.0",
) -> str:
    """Write a BraTS label map as a DICOM SEG (binary, one segment per tumour class) referencing the series
    in ``series_dir`` (e.g. the T1ce folder of a DICOM case). Needs ``highdicom``.

    ``label``: a NIfTI file on the series' voxel grid (e.g. the bundle's prediction for a DICOM case; axis
    flips/permutations are undone), or an array indexed (column, row, slice) as MONAI's ITKReader loads the
    series. ``labels``: its (necrotic, oedema, enhancing) values. Classes without voxels get no segment.
    """
    import highdicom as hd
    import nibabel as nib
    from pydicom.sr.codedict import codes

    datasets = series_datasets(series_dir)
    affine = series_affine(datasets)
    shape = (int(datasets[0].Columns), int(datasets[0].Rows), len(datasets))
    if isinstance(label, (str, os.PathLike)):
        img = nib.load(str(label))
        data = onto_series_grid(np.asarray(img.dataobj), img.affine, affine, shape)
    else:
        data = np.asarray(label)
        if data.shape != shape:
            raise ValueError(f"label shape {data.shape} is not the series shape {shape} (column, row, slice)")
    types = (codes.SCT.Necrosis, codes.SCT.Edema, codes.SCT.Neoplasm)
    present = [i for i, v in enumerate(labels) if np.any(data == v)]
    if not present:
        raise ValueError("the label map is empty: a DICOM SEG needs at least one segment")
    mask = np.zeros(data.shape, dtype=np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    for number, i in enumerate(present, start=1):
        mask[data == labels[i]] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=SEGMENT_NAMES[i],
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=types[i],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*CLASS_COLOURS[i]),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=np.ascontiguousarray(mask.transpose(2, 1, 0)),  # (slice, row, column), frames = datasets
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI bundle",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(out_path))
    return str(out_path)


def dicom_seg_to_label(
    seg_path: str | os.PathLike, series_dir: str | os.PathLike, labels: Sequence[int] = BRATS2020_LABELS
) -> tuple[np.ndarray, np.ndarray]:
    """(label map, RAS affine) of a DICOM SEG written by :func:`label_to_dicom_seg`, on the grid of the
    referenced series as MONAI's ITKReader loads it (indexed column, row, slice). Needs ``highdicom``."""
    import highdicom as hd

    datasets = series_datasets(series_dir)
    seg = hd.seg.segread(str(seg_path))
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    value_of = {number: labels[SEGMENT_NAMES.index(name)] for number, name in names.items()}
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets], combine_segments=True
    )  # (slice, row, column) of segment numbers
    out = np.zeros(pixels.shape, dtype=np.uint8)
    for number, value in value_of.items():
        out[pixels == number] = value
    return out.transpose(2, 1, 0), series_affine(datasets)


__all__ = [
    "DICOM_READER",
    "SEGMENT_NAMES",
    "SLICE_TOLERANCE",
    "DicomSeriesError",
    "SeriesGrid",
    "dicom_seg_to_label",
    "find_dicom_cases",
    "is_dicom_file",
    "is_dicom_series_dir",
    "keep_locale",
    "mm_str",
    "label_to_dicom_seg",
    "new_uid",
    "nifti_case_to_dicom",
    "nifti_to_dicom_series",
    "onto_series_grid",
    "series_affine",
    "series_datasets",
    "series_grid",
]
