"""Dataset layouts -> one datalist format.

Every case becomes one datalist entry::

    {"case_id": "BraTS20_Training_001",
     "image": [".../_t1.nii.gz", ".../_t1ce.nii.gz", ".../_t2.nii.gz", ".../_flair.nii.gz"],
     "label": ".../_seg.nii.gz",          # only where a segmentation exists
     "fold": 3}                            # only in training datalists

The image list is always in the bundle's channel order T1, T1ce, T2, FLAIR (``MODALITIES``). A case can
also be one 4D NIfTI holding the four channels in that order (``"image": "case.nii.gz"``), which is what
MONAI Label hands a bundle.

Supported layouts (``detect_layout`` tells them apart, ``LAYOUT_FINDERS`` maps each to its finder):

* ``brats2020``: ``<id>_t1/_t1ce/_t2/_flair[/_seg].nii[.gz]``, labels 1/2/4 (BraTS 2017-2021 releases,
  training and unlabelled validation data alike).
* ``brats2021``: ``<id>-t1n/-t1c/-t2w/-t2f[-seg].nii.gz`` (BraTS 2023/2024 naming, e.g.
  ``BraTS-GLI-00000-000``; also -MEN/-MET/-PED/-SSA), labels 1/2/3 with 3 = enhancing.
* ``msd``: Medical Segmentation Decathlon Task01_BrainTumour, ``imagesTr/BRATS_001.nii.gz`` (one 4D file,
  channels FLAIR, T1w, T1gd, T2w), ``labelsTr/`` (1 oedema, 2 non-enhancing, 3 enhancing), ``imagesTs/``.
* ``dicom``: one DICOM series folder per modality (``case/t1/``, ``case/t1ce/``, ...), see
  :mod:`scripts.data.dicom`; images only.
* ``nifti4d``: a folder of 4D NIfTI files already in the bundle's channel order; images only.

Items that need it carry their own conventions, so one preprocessing serves every layout:

* ``"labels": [necrotic, oedema, enhancing]``: the label values of the item's segmentation (read by
  ``scripts.transforms.LabelToRegionsd`` / ``RegionsToLabeld`` with ``labels_key="labels"``);
* ``"channel_order": [1, 2, 3, 0]``: bundle channel ``i`` is the file's channel ``channel_order[i]`` (read
  by ``scripts.transforms.SelectChannelsd``);
* ``"reader": "ITKReader"``: the image is DICOM series folders (a hint; ``LoadImaged`` picks ITKReader for
  folders by itself).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from scripts.conventions import (
    BRATS2020_LABELS,
    BRATS2021_LABELS,
    BRATS2021_MODALITIES,
    LABEL_SUFFIX,
    MODALITIES,
    MSD_CHANNEL_ORDER,
    MSD_LABELS,
    case_id_from_path,
    case_id_problem,
    modality_of,
    strip_nifti,
)
from scripts.data.checks import failure, file_list, format_failure, output_ids
from scripts.data.dicom import find_dicom_cases
from scripts.io import write_json

logger = logging.getLogger(__name__)

LAYOUTS = ("brats2020", "brats2021", "msd", "dicom", "nifti4d")


class DatasetError(ValueError):
    """The run's data cannot be used as a whole (no such folder, no cases, duplicate case ids): one line."""


def _one_line(e: BaseException) -> str:
    text = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip()
    return " ".join(text.split()) or type(e).__name__


def exit_or_raise(fn, exit_on_error: bool):
    """``fn()``; with ``exit_on_error`` (the configs) a data error becomes ``SystemExit("error: <one line>")``,
    so ``python -m monai.bundle run`` prints that line and exits with code 1 instead of a traceback."""
    try:
        return fn()
    except (DatasetError, FileNotFoundError, NotADirectoryError, KeyError, ValueError) as e:
        if exit_on_error:
            raise SystemExit(f"error: {_one_line(e)}") from None
        raise


def check_unique_case_ids(items: Sequence, what: str = "cases") -> None:
    """Raise :class:`DatasetError` when two ``items`` share a case id (their ``case_id``, or the id of their
    first image file, which the prediction ``<case_id>.nii.gz`` is named after): one line, ``case: file:
    problem``, naming both files and how many other ids are duplicated too."""
    seen: dict[str, tuple[str, object]] = {}
    dups = []
    for item in items:
        if not isinstance(item, dict):
            continue
        first = _first(item.get("image")) if item.get("image") else "<datalist entry>"
        for cid in output_ids(item):
            if cid in seen:
                dups.append((cid, (first, item.get("case_id")), seen[cid]))
            seen.setdefault(cid, (first, item.get("case_id")))
    if dups:
        (cid, (file, owner), (other, other_owner)), more = dups[0], len({d[0] for d in dups}) - 1
        also = _duplicate_reason(file, owner, other, other_owner)
        raise DatasetError(
            f"{cid}: {file}: duplicate case id in {what}, {also}; predictions are named "
            "<case_id>.nii.gz, so case ids must be unique (rename a case folder or give each datalist entry its "
            "own case_id)" + (f"; {more} more duplicate id(s)" if more else "")
        )


def _duplicate_reason(file: str, owner, other: str, other_owner) -> str:
    """Why two entries share a case id: the same case listed twice, one file in two cases of their own ids, or
    two files of the same id."""
    if file != other:
        return f"also the id of {other}"
    if owner and other_owner and owner != other_owner:
        return f"the same file in two cases ({other_owner} and {owner})"
    return "the same case listed twice"


INCOMPLETE_MODES = ("raise", "keep")


def _check_incomplete(incomplete: str) -> None:
    if incomplete not in INCOMPLETE_MODES:
        raise ValueError(f"incomplete must be one of {INCOMPLETE_MODES}, got {incomplete!r}")


def _excluded(root, exclude: Sequence) -> set[str]:
    """Real paths of the ``exclude`` folders strictly inside ``root`` (a run's output folders: never input)."""
    top = os.path.realpath(root)
    return {r for r in map(os.path.realpath, map(str, exclude)) if r != top and r.startswith(top + os.sep)}


def _walk(root: str | os.PathLike, exclude: Sequence = ()) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` with symlinked folders followed, each real folder once (a link loop ends, a case linked
    twice is found once), the ``exclude`` folders (:func:`_excluded`) left out, and the names of the hidden
    folders (``.case``; ``__MACOSX``) of each folder as the third item, not descended into."""
    seen, skip = set(), _excluded(root, exclude)
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or real in skip:
            dirs[:] = []
            continue
        seen.add(real)
        hidden = sorted(d for d in dirs if d.startswith(".") or d == "__MACOSX")
        dirs[:] = sorted(d for d in dirs if d not in hidden)
        yield folder, files, hidden


def nifti_files(root: str | os.PathLike, exclude: Sequence = ()) -> list[Path]:
    """Every NIfTI file under ``root`` (``.nii``/``.nii.gz`` in any case, see ``strip_nifti``), sorted; hidden
    files and folders (macOS/archive debris such as MSD's ``._BRATS_001.nii.gz``, see :func:`hidden_folders`),
    ``__MACOSX`` and the ``exclude`` folders inside ``root`` (the run's output folders) are left out. Symlinked
    folders are followed, each real folder once, so a link loop ends and a case linked twice is found once."""
    found = []
    for folder, files, _ in _walk(root, exclude):
        found += [Path(folder) / f for f in files if not f.startswith(".") and strip_nifti(f) is not None]
    return sorted(found)


def hidden_folders(root: str | os.PathLike, exclude: Sequence = ()) -> list[tuple[Path, int]]:
    """``(folder, number of NIfTI files in it and below)`` of every hidden folder under ``root`` (``.case``,
    ``__MACOSX``) holding NIfTI files: :func:`nifti_files` does not search them, the run says so."""
    out = []
    for folder, _, hidden in _walk(root, exclude):
        for name in hidden:
            count = sum(strip_nifti(f) is not None for _, _, fs in os.walk(Path(folder) / name) for f in fs)
            if count:
                out.append((Path(folder) / name, count))
    return out


def _split_files(
    root: Path, modalities: Sequence[str], sep: str, exclude: Sequence = ()
) -> dict[tuple[Path, str], dict[str, Path]]:
    """``{(folder, case prefix): {suffix: file}}`` of the files ``<prefix><sep><suffix>.nii[.gz]`` under
    ``root`` whose suffix is one of ``modalities`` or ``seg``, matched in any case (``_T1``, ``.NII.GZ``;
    suffixes keyed in lower case); of two files for one suffix (``.nii`` and ``.nii.gz``) the first in sorted
    order is kept (the other is reported by :func:`unused_files`)."""
    suffixes = {s.lower() for s in (*modalities, LABEL_SUFFIX)}
    cases: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in nifti_files(root, exclude):
        prefix, found_sep, suffix = strip_nifti(path.name).rpartition(sep)
        if found_sep and prefix and suffix.lower() in suffixes:
            cases.setdefault((path.parent, prefix), {}).setdefault(suffix.lower(), path)
    return cases


def _seg_quirk(folder: Path, images: Sequence[Path]) -> Path | None:
    """The one other NIfTI file with ``seg`` in its name in a single-case folder (BraTS 2020's
    ``W39_1998.09.19_Segm.nii``), else ``None``."""
    others = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and strip_nifti(p.name) is not None
        and p not in images
        and "seg" in p.name.lower()
    ]
    return others[0] if len(others) == 1 else None


def _find_split_cases(
    root: str | os.PathLike,
    modalities: Sequence[str],
    sep: str,
    labels: Sequence[int],
    incomplete: str,
    brats2020_label_quirks: bool = False,
    exclude: Sequence = (),
) -> list[dict]:
    """Cases stored as one ``<id><sep><modality>.nii[.gz]`` file per modality (``modalities`` in the bundle's
    channel order) plus ``<id><sep>seg`` when labelled; found from any of their modality files. ``brats2020_label_quirks`` also accepts the label with the other
    NIfTI extension and the single-case-folder ``*seg*`` file (see :func:`find_brats2020_cases`)."""
    _check_incomplete(incomplete)
    files = _split_files(Path(root), modalities, sep, exclude)
    keys = [key for key, found in sorted(files.items()) if any(m in found for m in modalities)]
    per_folder: dict[Path, int] = {}
    for folder, _ in keys:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    cases = []
    for folder, prefix in keys:
        found = files[(folder, prefix)]
        ext = ".nii.gz" if next(iter(found.values())).name.lower().endswith(".gz") else ".nii"
        images = [found.get(m) or folder / f"{prefix}{sep}{m}{ext}" for m in modalities]
        missing = [str(p) for m, p in zip(modalities, images) if m not in found or not p.is_file()]
        if missing and incomplete == "raise":
            raise FileNotFoundError(f"case {prefix}: missing modality file(s) {missing}")
        item = {"case_id": prefix, "image": [str(p) for p in images]}
        label = found.get(LABEL_SUFFIX)
        if brats2020_label_quirks and label is None and per_folder[folder] == 1:
            label = _seg_quirk(folder, images)
        if label is not None and label.is_file():
            item["label"] = str(label)
        item["labels"] = list(labels)
        cases.append(item)
    return sorted(cases, key=lambda c: c["case_id"])


def find_brats2020_cases(root: str | os.PathLike, incomplete: str = "raise", exclude: Sequence = ()) -> list[dict]:
    """All BraTS 2020-style cases under ``root`` (searched recursively, symlinked folders followed: see
    :func:`nifti_files`), sorted by case id.

    A case is a set of ``<id>_t1``, ``<id>_t1ce``, ``<id>_t2``, ``<id>_flair`` NIfTI files in one folder
    (suffixes and extensions in any letter case, ``.nii`` and ``.nii.gz`` may be mixed),
    plus ``<id>_seg`` when labelled (training data; validation data have none and give items without
    ``label``). Raises ``FileNotFoundError`` naming the case and the missing file when a case has some
    modalities but not all. Items carry ``"labels": [1, 2, 4]``.

    ``incomplete="keep"`` (batch inference and evaluation) keeps such a case instead, its image list naming
    the missing file(s), so the per-case checks of :mod:`scripts.data.checks` report it and the other cases
    go on.

    A case folder holding only one case and, instead of ``<id>_seg``, exactly one other NIfTI file with
    ``seg`` in its name uses that file as label: BraTS 2020 ships ``BraTS20_Training_355`` with
    ``W39_1998.09.19_Segm.nii``.
    """
    return _find_split_cases(root, MODALITIES, "_", BRATS2020_LABELS, incomplete, True, exclude)


def find_brats2021_cases(root: str | os.PathLike, incomplete: str = "raise", exclude: Sequence = ()) -> list[dict]:
    """All BraTS 2023/2024-style cases under ``root`` (searched recursively), sorted by case id.

    A case is ``<id>-t1n``, ``<id>-t1c``, ``<id>-t2w``, ``<id>-t2f`` NIfTI files in one folder (e.g.
    ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz``), plus ``<id>-seg`` when labelled. The image list
    maps t1n -> T1, t1c -> T1ce, t2w -> T2, t2f -> FLAIR; items carry ``"labels": [1, 2, 3]`` (3 =
    enhancing). Raises ``FileNotFoundError`` naming the case and the missing file(s) for incomplete cases,
    or with ``incomplete="keep"`` keeps them (see :func:`find_brats2020_cases`).
    """
    return _find_split_cases(root, BRATS2021_MODALITIES, "-", BRATS2021_LABELS, incomplete, exclude=exclude)


MSD_SUBSETS = ("imagesTr", "imagesTs")
_MSD_NAME = re.compile(r"^BRATS_\d+\.nii(\.gz)?$")


def _msd_root(root: Path) -> tuple[Path, tuple[str, ...]] | None:
    """(task folder, image sub-folders to use) when ``root`` is an MSD task folder, one of its ``imagesTr`` /
    ``imagesTs`` folders, or a folder holding exactly one task folder; else ``None``."""
    if not root.is_dir():
        return None
    if any((root / s).is_dir() for s in MSD_SUBSETS):
        return root, MSD_SUBSETS
    if root.name in MSD_SUBSETS:
        return root.parent, (root.name,)
    tasks = [
        c for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".") and (c / "imagesTr").is_dir()
    ]
    if len(tasks) == 1:
        return tasks[0], MSD_SUBSETS
    return None


def _msd_conventions(task: Path) -> tuple[list[int], list[int]]:
    """(channel_order, labels) from the task's ``dataset.json`` (``modality`` and ``labels`` maps), falling
    back to the Task01_BrainTumour values when it is absent or does not name all four modalities / the three
    tumour labels."""
    order, labels = list(MSD_CHANNEL_ORDER), list(MSD_LABELS)
    try:
        meta = json.loads((task / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return order, labels
    modality = {modality_of(name): int(ch) for ch, name in (meta.get("modality") or {}).items()}
    if all(m in modality for m in MODALITIES):
        order = [modality[m] for m in MODALITIES]
    found = {}
    for value, name in (meta.get("labels") or {}).items():
        n = str(name).lower().replace("_", " ").replace("-", " ")
        if "non enhancing" in n or "necro" in n:
            found["necrotic"] = int(value)
        elif "enhancing" in n:
            found["enhancing"] = int(value)
        elif "edema" in n or "oedema" in n:
            found["oedema"] = int(value)
    if len(found) == 3:
        labels = [found["necrotic"], found["oedema"], found["enhancing"]]
    return order, labels


def find_msd_cases(root: str | os.PathLike) -> list[dict]:
    """Cases of a Medical Segmentation Decathlon Task01_BrainTumour folder, sorted by case id.

    ``root`` is the task folder (``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``dataset.json``), one of its
    image folders (only those cases), or a folder holding one task folder. Each case is one 4D NIfTI,
    ``{"case_id": "BRATS_001", "image": ".../imagesTr/BRATS_001.nii.gz", "label": ".../labelsTr/BRATS_001.nii.gz",
    "channel_order": [1, 2, 3, 0], "labels": [2, 1, 3]}`` (``label`` only where ``labelsTr`` has the file;
    the conventions come from ``dataset.json`` when it names them). The ``._*`` files of the MSD archive
    are skipped.
    """
    found = _msd_root(Path(root))
    if found is None:
        return []
    task, subsets = found
    order, labels = _msd_conventions(task)
    cases = []
    for subset in subsets:
        folder = task / subset
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            stem = strip_nifti(path.name)
            if stem is None or path.name.startswith(".") or not path.is_file():
                continue
            item = {"case_id": stem, "image": str(path)}
            label = task / "labelsTr" / path.name
            if subset == "imagesTr" and label.is_file():
                item["label"] = str(label)
            item["channel_order"] = list(order)
            item["labels"] = list(labels)
            cases.append(item)
    return sorted(cases, key=lambda c: c["case_id"])


def find_nifti4d_cases(root: str | os.PathLike) -> list[dict]:
    """The NIfTI files directly in ``root``, each one 4D case already in the bundle's channel order."""
    root = Path(root)
    if root.is_file():
        return [{"case_id": case_id_from_path(root), "image": str(root)}] if strip_nifti(root.name) else []
    return [
        {"case_id": case_id_from_path(p), "image": str(p)}
        for p in sorted(root.iterdir())
        if strip_nifti(p.name) is not None and p.is_file() and not p.name.startswith(".")
    ]


LAYOUT_FINDERS = {
    "brats2020": find_brats2020_cases,
    "brats2021": find_brats2021_cases,
    "msd": find_msd_cases,
    "dicom": find_dicom_cases,
    "nifti4d": find_nifti4d_cases,
}
"""Layout name -> finder (``root`` -> datalist items, sorted by case id)."""


def detect_layout(root: str | os.PathLike, exclude: Sequence = ()) -> str | None:
    """The layout of the data at ``root`` (one of ``LAYOUTS``), or ``None`` when nothing is recognised.

    Checked in this order: an MSD task folder (``imagesTr``/``imagesTs``, or such a folder itself); BraTS
    2023+ modality files (``*-t1n/-t1c/-t2w/-t2f.nii*``) or BraTS 2020 ones (``*_t1/_t1ce/_t2/_flair.nii*``)
    anywhere below (both at once is ambiguous: ``ValueError``, pass the layout explicitly), so a folder holding
    one modality file of a case, e.g. while the case is being written, is an incomplete case, never a 4D
    study; DICOM case folders; NIfTI files directly in ``root`` (4D cases; if they are all named like MSD's
    ``BRATS_001.nii.gz``, ``msd`` with a warning, because their channels are in MSD order); a single NIfTI
    file (``nifti4d``).
    """
    root = Path(root)
    if root.is_file():
        return "nifti4d" if strip_nifti(root.name) is not None else None
    if not root.is_dir():
        return None
    if _msd_root(root) is not None:
        return "msd"
    stems = [strip_nifti(p.name).lower() for p in nifti_files(root, exclude)]
    found = [
        layout
        for layout, suffixes in (
            ("brats2021", [f"-{m}" for m in BRATS2021_MODALITIES]),
            ("brats2020", [f"_{m}" for m in MODALITIES]),
        )
        if any(stem.endswith(suffix) for stem in stems for suffix in suffixes)
    ]
    if len(found) > 1:
        raise ValueError(f"{root}: holds both {' and '.join(found)} cases; choose one with layout=...")
    if found:
        return found[0]
    if find_dicom_cases(root):
        return "dicom"
    niftis = find_nifti4d_cases(root)
    if niftis:
        if all(_MSD_NAME.match(Path(c["image"]).name) for c in niftis):
            warnings.warn(
                f"{root}: NIfTI files named like MSD Task01 (BRATS_xxx): reading their channels in MSD order "
                "(FLAIR, T1w, T1gd, T2w); pass layout='nifti4d' if they are already T1, T1ce, T2, FLAIR",
                stacklevel=2,
            )
            return "msd"
        return "nifti4d"
    return None


def find_cases(
    root: str | os.PathLike, layout: str = "auto", incomplete: str = "raise", exclude: Sequence = ()
) -> tuple[str, list[dict]]:
    """(layout, datalist items) for the data at ``root``; ``layout="auto"`` detects it (see
    :func:`detect_layout`). Raises ``FileNotFoundError`` when no case is found. ``incomplete="keep"`` keeps
    BraTS-style cases that lack a modality file (see :func:`find_brats2020_cases`)."""
    _check_incomplete(incomplete)
    root = Path(root)
    if layout in (None, "auto"):
        layout = detect_layout(root, exclude)
        if layout is None:
            raise FileNotFoundError(
                f"{root}: no cases of a known layout ({', '.join(LAYOUTS)}): see scripts/data/layouts.py"
            )
    if layout not in LAYOUT_FINDERS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {list(LAYOUTS)}")
    if layout == "msd" and _msd_root(root) is None:  # a plain folder of BRATS_xxx.nii.gz files
        order, labels = _msd_conventions(root.parent)
        cases = [dict(c, channel_order=order, labels=labels) for c in find_nifti4d_cases(root)]
    elif layout in ("brats2020", "brats2021"):
        cases = LAYOUT_FINDERS[layout](root, incomplete=incomplete, exclude=exclude)
    else:
        cases = LAYOUT_FINDERS[layout](root)
    if not cases:
        raise FileNotFoundError(f"{root}: no {layout} cases found")
    return layout, cases


LAYOUT_NAMING = {
    "brats2020": "<id>_t1/_t1ce/_t2/_flair[/_seg].nii[.gz] in one folder",
    "brats2021": "<id>-t1n/-t1c/-t2w/-t2f[-seg].nii[.gz] in one folder",
    "msd": "imagesTr/, imagesTs/ or labelsTr/<id>.nii.gz of one task folder",
    "dicom": "one DICOM series folder per modality",
    "nifti4d": "4D <id>.nii[.gz] files directly in the folder",
}
"""How each layout names a case's files, for the reason a file that belongs to no case is skipped."""


class CaseList(list):
    """Datalist items, plus ``skipped``: the failure records (``case_id``, ``file``, ``problem``, see
    ``scripts.data.checks.failure``) of the candidates that are not among the items, a NIfTI file under the
    dataset folder that belongs to no case (:func:`unused_files`) or a datalist entry of the wrong type
    (:func:`valid_entries`); the end-of-run report counts and lists them with the failed cases. ``error``: the
    one-line data error of a search whose report waits for the run (``find_inference_cases(defer_errors=True)``;
    no items then), raised by :meth:`check`."""

    def __init__(self, items=(), skipped=(), error: str | None = None):
        super().__init__(items)
        self.skipped = list(skipped)
        self.error = error

    def check(self) -> CaseList:
        """The list itself, or ``SystemExit("error: <one line>")`` when its search failed (``error``)."""
        if self.error:
            raise SystemExit(f"error: {self.error}")
        return self


def unused_files(root: str | os.PathLike, cases: Sequence[dict], layout: str, exclude: Sequence = ()) -> list[dict]:
    """A failure record for every NIfTI file under ``root`` (:func:`nifti_files`, symlinks followed) that
    none of ``cases`` uses as image or label and that is named like a case file: a second file for one modality
    of a case, or a modality or label file that fits no case of ``layout`` (``notes_T1w.nii.gz``, a label
    without images). Other NIfTI files (e.g. other algorithms' segmentations ``algorithms/isen-20.nii.gz``) are
    not case files: each is logged as ignored, with no record."""
    used = {os.path.realpath(f) for c in cases for k in ("image", "label") for f in file_list(c.get(k))}
    ids = {c.get("case_id") for c in cases}
    records = []
    for folder, count in hidden_folders(root, exclude):
        logger.warning(
            "folder ignored: %s: a hidden folder; its %d NIfTI file(s) are not searched for cases", folder, count
        )
    for path in nifti_files(root, exclude):
        if os.path.realpath(path) in used:
            continue
        case_id = case_id_from_path(path)
        if case_id in ids:
            problem = f"not used: case {case_id} already takes another file for this modality or label"
        elif file_role(path) is not None:
            problem = f"not part of any {layout} case (expected {LAYOUT_NAMING.get(layout, layout)})"
        else:
            logger.warning("file ignored: %s: named like no modality or label file of a case", path)
            continue
        records.append(failure(case_id, path, problem))
    return records


def file_role(path: str | os.PathLike) -> str | None:
    """What a NIfTI file's name says it holds: ``LABEL_SUFFIX`` for a segmentation (``<id>_seg``, ``<id>-SEG``,
    ``seg``), the bundle modality for a modality file (``<id>_T1ce`` -> ``t1ce``, ``<id>-t1n`` or ``t1`` ->
    ``t1``; any spelling of :func:`modality_of`), ``None`` for any other name (``<id>.nii.gz``)."""
    stem = strip_nifti(os.path.basename(path)) or ""
    suffix = re.split(r"[_\-.]", stem)[-1]
    return LABEL_SUFFIX if suffix.lower() == LABEL_SUFFIX else modality_of(suffix)


def _survey(root: Path, layout: str, incomplete: str, exclude: Sequence = ()) -> tuple[str, CaseList]:
    """:func:`find_cases` plus the files under ``root`` it left out (:func:`unused_files`) as ``skipped``; the
    ``exclude`` folders inside ``root`` (the run's output folders) are not searched."""
    layout, cases = find_cases(root, layout, incomplete, exclude)
    return layout, CaseList(cases, unused_files(root, cases, layout, exclude))


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}


def _json_value(value) -> str:
    """``number 42``, ``null``, ``object {...}``: a datalist value as a message shows it (one line, short)."""
    kind = "object" if isinstance(value, dict) else _JSON_TYPES.get(type(value), type(value).__name__)
    if value is None:
        return kind
    text = json.dumps(value, default=str)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_path(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def entry_problem(entry, fields: Sequence[str] = ("image", "label", "case_id")) -> str | None:
    """Why a datalist entry cannot be used (``'image': expected a file path or a list of file paths, got
    number 42``), or ``None``: it is an object whose ``image`` is a path or a non-empty list of paths, and,
    among ``fields``, whose ``label`` (when present) is a path and ``case_id`` (when present) a valid case id
    (``scripts.conventions.case_id_problem``)."""
    if not isinstance(entry, dict):
        return f"expected an object with an 'image', got {_json_value(entry)}"
    image = entry.get("image")
    if not (_is_path(image) or (isinstance(image, list) and image and all(_is_path(p) for p in image))):
        return f"'image': expected a file path or a list of file paths, got {_json_value(image)}"
    if "label" in fields and "label" in entry and not _is_path(entry["label"]):
        return f"'label': expected a file path, got {_json_value(entry['label'])}"
    if "case_id" in fields and "case_id" in entry and (problem := case_id_problem(entry["case_id"])):
        return f"'case_id': {problem}, got {_json_value(entry['case_id'])}"
    return None


def valid_entries(
    datalist: dict, key: str, source, fields: Sequence[str] = ("image", "label", "case_id")
) -> tuple[list[dict], list[dict]]:
    """(the usable entries of ``datalist[key]``, a failure record for each other entry, see
    :func:`entry_problem`: ``<key>[i]: <datalist file>: <problem>``, or ``<case_id>: <datalist file>: <key>[i]:
    <problem>`` when the entry has a valid case id). A ``key`` that is not a list is a :class:`DatasetError`."""
    entries = datalist[key]
    if not isinstance(entries, list):
        raise DatasetError(f"{source}: '{key}' must be a list of entries, got {_json_value(entries)}")
    good, skipped = [], []
    for i, entry in enumerate(entries):
        problem = entry_problem(entry, fields)
        if problem is None:
            good.append(entry)
            continue
        case_id = entry.get("case_id") if isinstance(entry, dict) else None
        if case_id_problem(case_id) is None:
            skipped.append(failure(case_id, source, f"{key}[{i}]: {problem}"))
        else:
            skipped.append(failure(f"{key}[{i}]", source, problem))
    return good, skipped


def assign_folds(cases: list[dict], num_folds: int = 5, seed: int = 0) -> list[dict]:
    """Copies of ``cases`` with a ``fold`` in [0, num_folds): a seeded shuffle dealt round-robin, so the
    folds differ in size by at most one case and the same seed always gives the same split."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if len(cases) < num_folds:
        raise ValueError(f"{len(cases)} cases cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(cases))
    out = [dict(c) for c in cases]
    for rank, i in enumerate(order):
        out[i]["fold"] = int(rank % num_folds)
    return out


def split_fold(datalist: dict, fold: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) for cross-validation fold ``fold`` of a datalist whose training entries carry
    ``fold``; a datalist with an explicit ``validation`` list is returned as it is."""
    if datalist.get("validation"):
        return datalist["training"], datalist["validation"]
    training = datalist["training"]
    folds = {c.get("fold") for c in training}
    if fold not in folds:
        raise ValueError(
            f"fold {fold} not in the datalist (folds present: {sorted(f for f in folds if f is not None)})"
        )
    return [c for c in training if c["fold"] != fold], [c for c in training if c["fold"] == fold]


def load_datalist(path: str | os.PathLike) -> dict:
    """A datalist JSON with relative paths resolved against the JSON's folder (MONAI decathlon style).

    Not ``monai.data.load_decathlon_datalist``: it reads one list per call and also rewrites every other string
    field that happens to name an existing path (a ``case_id`` next to a case folder of that name), so only
    ``image`` and ``label`` are resolved here, in every list at once.
    """
    path = Path(path)
    try:
        datalist = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a readable datalist JSON ({_one_line(e)})") from None
    if not isinstance(datalist, dict):
        raise DatasetError(
            f"{path}: a datalist is a JSON object of lists ('training', 'testing'), got {_json_value(datalist)}"
        )
    base = path.parent

    def resolve(p):
        if isinstance(p, list):
            return [resolve(q) for q in p]
        return str(base / p) if _is_path(p) else p  # anything else is reported by valid_entries

    for items in datalist.values():
        for item in items if isinstance(items, list) else ():
            for field in ("image", "label") if isinstance(item, dict) else ():
                if field in item:
                    item[field] = resolve(item[field])
    return datalist


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    fold: int = 0,
    num_folds: int = 5,
    seed: int = 0,
    layout: str = "auto",
    incomplete: str = "raise",
    exit_on_error: bool = False,
    exclude: Sequence = (),
) -> dict:
    """The training datalist for ``dataset_dir``, with ``training`` and ``validation`` lists for ``fold``.

    ``dataset_dir`` may be a datalist JSON, or a folder in any of the layouts (``layout="auto"`` detects it,
    see :func:`detect_layout`); its labelled cases are split into ``num_folds`` folds (unlabelled ones, e.g.
    BraTS validation data or MSD ``imagesTs``, are left out). Discovery never writes data: a missing or empty
    folder is a :class:`DatasetError` (the default data are generated by an explicit ``initialize`` step of the
    training workflow, :func:`scripts.data.default_data.generate_default_data`). Case ids must
    be unique in each list (:func:`check_unique_case_ids`). ``skipped`` lists, with a warning each, the
    datalist entries of the wrong type (:func:`valid_entries`) or the NIfTI files of the folder that belong to
    no case (:func:`unused_files`); the good ones go on. ``incomplete="keep"`` keeps cases that lack a
    modality file (for evaluation, whose per-case checks report them; see :func:`find_brats2020_cases`).
    ``exit_on_error`` (the configs): a data error exits with one line ``error: ...`` instead of raising. The
    ``exclude`` folders inside ``dataset_dir`` (the run's output folders) are never searched for cases.
    """
    return exit_or_raise(
        lambda: _prepare_datalist(Path(dataset_dir), fold, num_folds, seed, layout, incomplete, exclude),
        exit_on_error,
    )


def _is_empty(folder: Path) -> bool:
    return not nifti_files(folder) and not find_dicom_cases(folder)


def _prepare_datalist(dataset_dir, fold, num_folds, seed, layout, incomplete, exclude=()):
    if dataset_dir.suffix == ".json":
        if not dataset_dir.is_file():
            raise DatasetError(f"{dataset_dir}: datalist file does not exist")
        datalist, skipped = load_datalist(dataset_dir), []
        for key in ("training", "validation"):
            if key in datalist:
                datalist[key], bad = valid_entries(datalist, key, dataset_dir)
                skipped += bad
    else:
        if not dataset_dir.exists():
            raise DatasetError(f"{dataset_dir}: dataset folder does not exist (check --dataset_dir)")
        if dataset_dir.is_dir() and _is_empty(dataset_dir):
            raise DatasetError(
                f"{dataset_dir}: dataset folder holds no NIfTI files or DICOM cases (check --dataset_dir)"
            )
        layout, found = _survey(dataset_dir, layout, incomplete, exclude)
        skipped = found.skipped
        check_unique_case_ids(found, f"the cases of {dataset_dir}")
        cases = [c for c in found if "label" in c]
        if not cases:
            raise FileNotFoundError(
                f"{dataset_dir}: no labelled cases in its {layout} layout ({len(found)} unlabelled case(s); "
                "training needs segmentations, e.g. <id>_seg.nii.gz, <id>-seg.nii.gz or labelsTr/)"
            )
        unlabelled = [c["case_id"] for c in found if "label" not in c]
        if unlabelled:
            logger.warning(
                "%d case(s) without a segmentation left out (nothing to train or score against): %s",
                len(unlabelled),
                ", ".join(unlabelled[:10]) + (", ..." if len(unlabelled) > 10 else ""),
            )
        datalist = {"training": assign_folds(cases, num_folds, seed)}
    training, validation = split_fold(datalist, fold)
    check_unique_case_ids(training, f"the training list of {dataset_dir}")
    check_unique_case_ids(validation, f"the validation list of {dataset_dir}")
    for record in skipped:
        logger.warning("case skipped: %s", format_failure(record))
    return {"training": training, "validation": validation, "skipped": skipped}


def find_inference_cases(
    source: str | os.PathLike,
    datalist_key: str = "testing",
    layout: str = "auto",
    incomplete: str = "raise",
    exit_on_error: bool = False,
    exclude: Sequence = (),
    defer_errors: bool = False,
) -> CaseList:
    """Cases to segment: a datalist JSON (its ``datalist_key`` list), a folder in any of the layouts
    (BraTS 2020 or 2023+ style cases, an MSD task or image folder, DICOM case folders, a folder of 4D NIfTI
    files; ``layout="auto"`` detects it), or one 4D NIfTI file: a :class:`CaseList`, whose ``skipped`` lists
    the datalist entries of the wrong type (a label is not checked: inference does not use it) or the NIfTI
    files of the folder that belong to no case. A folder's labels are dropped; the items keep their
    ``labels`` / ``channel_order`` / ``reader`` fields. ``incomplete="keep"`` keeps BraTS-style cases that
    lack a modality file, for :mod:`scripts.data.checks` to report (see :func:`find_brats2020_cases`). Case ids
    must be unique (:func:`check_unique_case_ids`, a :class:`DatasetError` otherwise); ``exit_on_error`` (the
    configs): a data error exits with one line ``error: ...`` instead of raising. The ``exclude`` folders inside
    a dataset folder (the run's output folders, ``--output_dir``) are never searched for cases.
    ``defer_errors`` (inference.json, whose workflow is built and checked without data, e.g. by the model zoo's
    property check): a data error gives an empty :class:`CaseList` holding it, and the run's first step,
    :meth:`CaseList.check`, exits with it."""
    if defer_errors:
        try:
            return find_inference_cases(source, datalist_key, layout, incomplete, False, exclude)
        except (DatasetError, FileNotFoundError, NotADirectoryError, KeyError, ValueError) as e:
            return CaseList(error=_one_line(e))
    cases = exit_or_raise(
        lambda: _find_inference_cases(Path(source), datalist_key, layout, incomplete, exclude), exit_on_error
    )
    exit_or_raise(lambda: check_unique_case_ids(cases, f"the cases of {source}"), exit_on_error)
    return cases


def _find_inference_cases(source: Path, datalist_key: str, layout: str, incomplete: str, exclude=()) -> CaseList:
    if not source.exists():
        raise FileNotFoundError(f"{source}: input does not exist (check --dataset_dir)")
    if source.suffix == ".json":
        datalist = load_datalist(source)
        if datalist_key not in datalist:
            raise KeyError(f"{source}: no '{datalist_key}' list (keys: {sorted(datalist)})")
        good, skipped = valid_entries(datalist, datalist_key, source, fields=("image", "case_id"))
        cases = [dict(c, case_id=c.get("case_id") or case_id_from_path(_first(c["image"]))) for c in good]
        return CaseList(cases, skipped)
    if source.is_file() and layout in (None, "auto", "nifti4d"):
        return CaseList([{"case_id": case_id_from_path(source), "image": str(source)}])
    try:
        _, cases = _survey(source, layout, incomplete, exclude)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{source}: no cases found (BraTS-style folders, an MSD task, DICOM case folders or 4D NIfTI files)"
        ) from e
    return CaseList([{k: v for k, v in c.items() if k != "label"} for c in cases], cases.skipped)


def _first(image):
    return image[0] if isinstance(image, (list, tuple)) else image


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a datalist JSON for a dataset folder: labelled cases in k folds ('training'), "
        "unlabelled ones (BraTS validation data, MSD imagesTs, DICOM cases) as 'testing'."
    )
    parser.add_argument("--dataset_dir", required=True, help="dataset folder in any supported layout")
    parser.add_argument("--output", required=True, help="datalist JSON to write (paths stored relative to it)")
    parser.add_argument(
        "--layout", default="auto", choices=("auto",) + LAYOUTS, help="dataset layout (default: detect)"
    )
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        layout, cases = find_cases(args.dataset_dir, args.layout)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    labelled = [c for c in cases if "label" in c]
    unlabelled = [c for c in cases if "label" not in c]
    out_dir = Path(args.output).resolve().parent

    def rel(p):
        return [rel(q) for q in p] if isinstance(p, list) else os.path.relpath(p, out_dir)

    def relative(c):
        return dict(c, **{k: rel(c[k]) for k in ("image", "label") if k in c})

    datalist = {}
    if labelled:
        datalist["training"] = [relative(c) for c in assign_folds(labelled, args.num_folds, args.seed)]
    if unlabelled:
        datalist["testing"] = [relative(c) for c in unlabelled]
    write_json(datalist, args.output)
    parts = [f"{len(labelled)} labelled cases in {args.num_folds} folds (seed {args.seed})"] if labelled else []
    parts += [f"{len(unlabelled)} unlabelled cases for testing"] if unlabelled else []
    print(f"{args.output}: {layout} layout, {', '.join(parts)}")


if __name__ == "__main__":
    main()
