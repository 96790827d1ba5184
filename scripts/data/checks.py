"""Bad input: per-case checks that name the case, the file and the problem, and a dataset + loader that skip
bad cases, finish the good ones and report the bad ones at the end.

Two levels of checks, both raising ``scripts.transforms.CaseError`` (``case_id``, ``path``, ``problem``):

* :func:`check_case`, header level and cheap (nibabel headers only, run on every case in the main process
  before any data is loaded): every file exists and is a readable NIfTI announcing at most :data:`MAX_VOXELS`
  voxels (no decompression bomb is read) whose data are all there (a truncated
  ``.nii.gz`` is caught from its gzip trailer, a truncated ``.nii`` from its size), modality files are 3D (or
  the case is one 4D file with 4 channels), all modalities have the same shape and affine (every entry within
  ``scripts.conventions.AFFINE_ATOL_MM`` = 1e-4; the preprocessing's ``LoadImageSharedGridd`` stacks them on
  the first file's affine), and a label map is 3D with the images' geometry (the same tolerance).
* ``scripts.transforms.CheckImageDatad``, data level, the transform right after ``LoadImaged`` in the configs'
  ``preprocessing_transforms``: the image has 4 channels and no NaN/Inf voxel and no all-zero channel; a label map has no NaN/Inf voxel. Labels outside the expected set are rejected by
  ``scripts.transforms.LabelToRegionsd`` and by :mod:`scripts.evaluation`.

Batch runs (``configs/inference.json``, ``configs/evaluate.json``) use :class:`CheckedDataset` (header checks on
construction; any error of the preprocessing of one item, in a worker process or not, becomes a failure record
instead of an exception) and :class:`SkippingDataLoader` (a ``DataLoader`` whose batches leave the failed items
out and whose ``failures`` lists them), check the output folder first with :func:`check_output_dirs`, and end
with :func:`exit_on_failures`: one line per bad case (``case: file: problem``) and exit code 1; a failed case's
prediction left by an earlier run is renamed ``<case_id>.nii.gz.stale`` (:func:`retire_stale_predictions`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import DataLoader, Dataset, list_data_collate

from scripts.conventions import AFFINE_ATOL_MM, MODALITY_NAMES, case_id_from_path, prediction_name
from scripts.data.dicom import DicomSeriesError, SeriesGrid, mm_str, series_grid
from scripts.io import FAILED_WRITES, INPUTS, WRITTEN, remove_stale_temporaries
from scripts.transforms import CaseError, affines_match, shape_str

logger = logging.getLogger(__name__)

FAILURE_KEY = "__case_failure__"
"""Key of the record a :class:`CheckedDataset` item holds instead of data when its preprocessing failed."""
MAX_VOXELS = 512**3
"""Most voxels (all channels) one NIfTI file may announce in its header: 512^3 = 134,217,728, 15 times a BraTS
case (240 x 240 x 155 x 1) and more than a 0.5 mm whole-head scan. Loaded as float32 such a file takes 512 MiB,
and the preprocessing holds a few copies of it; a header that announces more (a crafted or corrupt header, a
decompression bomb) is refused before any data are read."""


class OutputDirError(OSError):
    """The output folder cannot be used (not a folder, cannot be created, not readable or not writable)."""


def failure(case_id: str, file, problem: str) -> dict:
    """A failure record: ``{"case_id", "file", "problem"}`` (what every report and JSON output lists)."""
    return {"case_id": str(case_id), "file": str(file), "problem": str(problem)}


def _escape_breaks(text) -> str:
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def format_failure(record: Mapping) -> str:
    """``case_id: file: problem``, the one line a bad case gets (line breaks, e.g. in a file name, written as
    ``\\n``)."""
    return ": ".join(_escape_breaks(record[k]) for k in ("case_id", "file", "problem"))


def file_list(value) -> list[str]:
    """The file names of an item's ``image`` or ``label`` entry (one file, a list of files, or none) as strings."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def case_id_of(item: Mapping, image_key: str = "image") -> str:
    """The item's ``case_id``, else the case id of its first image file."""
    if item.get("case_id"):
        return str(item["case_id"])
    files = file_list(item.get(image_key))
    return case_id_from_path(files[0]) if files else "<unknown case>"


# ------------------------------------------------------------------------------------------------ headers
def _read_header(path: str):
    """nibabel image (header only, data not read) of an existing file; ``CaseError`` when it is not a readable
    NIfTI or its data are cut short."""
    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.header.get_data_shape())
        affine = np.asarray(img.affine, dtype=float)
    except Exception as e:  # nibabel, gzip, zlib and OS errors all mean "not a readable NIfTI"
        raise CaseError(path, f"cannot read NIfTI header ({type(e).__name__}: {_first_line(e)})") from e
    if not np.all(np.isfinite(affine)):
        raise CaseError(path, "the header's affine holds NaN/Inf")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CaseError(
            path,
            f"the header's affine is singular (a zero voxel size or parallel axes: {_rows(affine)}), no voxel grid",
        )
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise CaseError(
            path,
            f"the header announces {voxels} voxels (shape {shape_str(shape)}), more than the {MAX_VOXELS} one file "
            "may hold (scripts.data.checks.MAX_VOXELS); refused before reading the data",
        )
    _check_data_size(path, img.header, shape)
    return img


def _rows(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in affine[:3]) + "]"


def _check_data_size(path: str, header, shape) -> None:
    """Raise ``CaseError`` when the file holds fewer data bytes than its header announces.

    ``.nii``: the file size. ``.nii.gz``: the uncompressed size in the gzip trailer (last 4 bytes) first; only
    when it disagrees (a truncated file, or a multi-member gzip) is the stream decompressed to be sure.
    """
    try:
        offset = int(header.get_data_offset())
        need = offset + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    except Exception:  # a header without these fields: let the loader decide
        return
    if not path.lower().endswith(".gz"):
        size = os.path.getsize(path)
        if size < need:
            raise CaseError(path, f"truncated: the file holds {size} bytes, its header needs {need}")
        return
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 4:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == need % 2**32:
                return
    total = 0
    try:
        with gzip.open(path, "rb") as g:
            while chunk := g.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        raise CaseError(path, f"truncated or corrupt gzip data ({type(e).__name__}: {_first_line(e)})") from e
    if total < need:
        raise CaseError(path, f"truncated: {total} bytes of data after decompression, its header needs {need}")


def check_case(
    item: Mapping,
    image_key: str = "image",
    label_key: str | None = "label",
    channels: int = 4,
    allow_missing_modalities: bool = False,
) -> None:
    """Header-level checks of one datalist item (see the module docstring); raises :class:`CaseError` naming
    the case, the file and the problem, the first problem found. A DICOM case's series folders are checked from
    their slice headers: each makes one evenly spaced grid (no missing slice) and all share the first one's grid.
    Two or more sequences given as one file are a warning (:func:`warn_shared_sequence_file`). With ``allow_missing_modalities`` a case given
    as one file per sequence may lack all of them but one; the present files are checked."""
    case_id = case_id_of(item, image_key)
    warn_shared_sequence_file(item, image_key)
    try:
        if allow_missing_modalities:
            item = _present_files_only(item, image_key, channels)
        _check_case(item, image_key, label_key, channels)
    except CaseError as e:
        raise CaseError(e.path, e.problem, case_id, e.channel) from None


def warn_shared_sequence_file(item: Mapping, image_key: str = "image") -> list[str]:
    """Log one warning line naming the case and the file when two or more sequences of a one-file-per-sequence case
    are the same file (one path given twice, a symlink or a hard link: the network would see copies of one
    sequence); returns the sequences that share a file (empty when none)."""
    files = file_list(item.get(image_key))
    if len(files) != len(MODALITY_NAMES):
        return []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, path in enumerate(files):
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            groups.setdefault((stat.st_dev, stat.st_ino), []).append(i)
    shared = [group for group in groups.values() if len(group) > 1]
    for group in shared:
        names = [MODALITY_NAMES[i] for i in group]
        logger.warning(
            "case %s: %s: one file given as %s (%s); the network sees %d copies of one sequence",
            case_id_of(item, image_key),
            files[group[0]],
            " and ".join([", ".join(names[:-1]), names[-1]]),
            "all four sequences" if len(group) == len(files) else "different sequences",
            len(group),
        )
    return [MODALITY_NAMES[i] for group in shared for i in group]


def _present_files_only(item: Mapping, image_key: str, channels: int) -> dict:
    """``item`` with its missing modality files replaced by the first present one (so the header checks compare
    the present files only); :class:`CaseError` when none of the ``channels`` files exists."""
    files = file_list(item.get(image_key))
    if len(files) != channels:
        return dict(item)
    present = [f for f in files if os.path.exists(f)]
    if not present:
        raise CaseError(files[0], f"none of the {channels} sequence files exists ({', '.join(MODALITY_NAMES)})")
    return dict(item, **{image_key: [f if os.path.exists(f) else present[0] for f in files]})


def _check_case(item: Mapping, image_key: str, label_key: str | None, channels: int) -> None:
    files = file_list(item.get(image_key))
    if not files:
        raise CaseError("<datalist entry>", f"no '{image_key}' file in the datalist entry {dict(item)}")
    if len(files) not in (1, channels):
        raise CaseError(
            files[0], f"expected {channels} modality files (T1, T1ce, T2, FLAIR) or one 4D file, got {len(files)}"
        )
    multi = len(files) > 1
    for i, path in enumerate(files):
        if not os.path.exists(path):
            raise CaseError(path, f"missing modality file ({MODALITY_NAMES[i]})" if multi else "file does not exist")
    if any(os.path.isdir(p) for p in files):  # DICOM series folders
        _check_dicom_series(files)
        return
    headers = [_read_header(p) for p in files]
    shapes = [tuple(int(s) for s in h.header.get_data_shape()) for h in headers]
    for i, (path, shape) in enumerate(zip(files, shapes)):
        if multi and len(shape) != 3:
            raise CaseError(
                path, f"expected a 3D image ({MODALITY_NAMES[i]}), got {len(shape)}D shape {shape_str(shape)}"
            )
        if not multi and not (len(shape) == 4 and shape[3] == channels):
            raise CaseError(
                path,
                f"expected a 4D image with {channels} channels (T1, T1ce, T2, FLAIR) or one 3D file per modality, "
                f"got {len(shape)}D shape {shape_str(shape)}",
            )
    for i in range(1, len(files)):
        if shapes[i] != shapes[0]:
            raise CaseError(
                files[i],
                f"{MODALITY_NAMES[i]} shape {shape_str(shapes[i])} does not match the {MODALITY_NAMES[0]} file's "
                f"{shape_str(shapes[0])} ({files[0]})",
            )
        a, b = np.asarray(headers[i].affine, float), np.asarray(headers[0].affine, float)
        if not affines_match(a, b):
            raise CaseError(
                files[i],
                f"{MODALITY_NAMES[i]} affine does not match the {MODALITY_NAMES[0]} file's ({files[0]}; largest "
                f"difference {np.abs(a - b).max():.4g} mm)",
            )
    label = item.get(label_key) if label_key else None
    if label is None:
        return
    label = str(label)
    if not os.path.exists(label):
        raise CaseError(label, "label file does not exist")
    header = _read_header(label)
    lshape = tuple(int(s) for s in header.header.get_data_shape())
    while len(lshape) > 3 and lshape[-1] == 1:
        lshape = lshape[:-1]
    if len(lshape) != 3:
        raise CaseError(label, f"expected a 3D label map, got {len(lshape)}D shape {shape_str(lshape)}")
    if lshape != shapes[0][:3]:
        raise CaseError(
            label, f"label shape {shape_str(lshape)} does not match the image shape {shape_str(shapes[0][:3])}"
        )
    a, b = np.asarray(header.affine, float), np.asarray(headers[0].affine, float)
    if not affines_match(a, b):
        raise CaseError(
            label,
            f"label affine does not match the image's ({files[0]}; largest difference {np.abs(a - b).max():.4g} mm)",
        )


def _check_dicom_series(files: Sequence[str]) -> None:
    """Every DICOM series folder of the case makes one evenly spaced grid (:func:`scripts.data.dicom.series_grid`:
    no missing slice), and every series lies on the first one's grid; :class:`CaseError` naming the sequence, its
    folder and the values otherwise."""
    grids = []
    for i, path in enumerate(files):
        name = MODALITY_NAMES[i] if len(files) == len(MODALITY_NAMES) else "DICOM"
        if not os.path.isdir(path):
            grids.append(None)
            continue
        if not any(os.scandir(path)):
            raise CaseError(path, "empty folder (no DICOM series)")
        try:
            grids.append(series_grid(path))
        except DicomSeriesError as e:
            raise CaseError(e.path, f"{name} series: {e.problem}") from None
    if len(files) != len(MODALITY_NAMES) or any(g is None for g in grids):
        return
    for i in range(1, len(files)):
        mismatch = _grid_mismatch(grids[i], grids[0])
        if mismatch:
            raise CaseError(
                files[i],
                f"the {MODALITY_NAMES[i]} series is not on the {MODALITY_NAMES[0]} series' grid ({files[0]}): "
                f"{mismatch}",
            )


def _grid_mismatch(grid: SeriesGrid, first: SeriesGrid) -> str | None:
    """How ``grid`` differs from ``first`` (readable values), or ``None`` when they match (:func:`affines_match`)."""
    if grid.shape != first.shape:
        return f"{_dims(grid.shape)} voxels (columns x rows x slices) against {_dims(first.shape)}"
    if not np.allclose(grid.spacing, first.spacing, atol=AFFINE_ATOL_MM):
        return f"voxel size {mm_str(grid.spacing)} mm against {mm_str(first.spacing)} mm"
    if not np.allclose(grid.origin, first.origin, atol=AFFINE_ATOL_MM):
        return f"first voxel at {mm_str(grid.origin)} mm (RAS) against {mm_str(first.origin)} mm"
    if not affines_match(grid.affine, first.affine):
        return f"orientation {_rows(grid.affine)} against {_rows(first.affine)}"
    return None


def _dims(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


# ------------------------------------------------------------------------------------- errors -> records
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _chain(e: BaseException) -> list[BaseException]:
    out = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def describe_error(
    item: Mapping, error: BaseException, image_key: str = "image", label_key: str | None = "label"
) -> dict:
    """The failure record (case, file, problem) of an exception raised while preparing ``item``.

    A :class:`CaseError` anywhere in the exception chain (MONAI wraps transform errors in ``RuntimeError``s)
    gives file and problem directly (a channel problem of a multi-file case names that modality's file);
    otherwise the innermost error is used, attributed to the item file its message names, or, when it names
    none, to the first of the item's files that cannot be read in full (the failure path only), else to the
    first image file.
    """
    case_id = case_id_of(item, image_key)
    images = file_list(item.get(image_key))
    files = images + (file_list(item.get(label_key)) if label_key else [])
    chain = _chain(error)
    for e in chain:
        if isinstance(e, CaseError):
            path = e.path
            if e.channel is not None and len(images) > 1 and e.channel < len(images):
                path = images[e.channel]
            return failure(case_id, path, e.problem)
    root = chain[-1]
    message = _first_line(root)
    for f in files:
        if message.startswith(f"{f}: "):
            return failure(case_id, f, message[len(f) + 2 :])
    for f in files:
        if f in message:
            return failure(case_id, f, message)
    problem = f"{type(root).__name__}: {message}"
    for f in files:
        if os.path.isfile(f):
            try:
                np.asanyarray(nib.load(f).dataobj)
            except Exception as e:
                return failure(case_id, f, f"cannot read the data ({type(e).__name__}: {_first_line(e)})")
    return failure(case_id, files[0] if files else "<datalist entry>", problem)


# ----------------------------------------------------------------------------------------- dataset/loader
class CheckedDataset(Dataset):
    """A MONAI ``Dataset`` that leaves bad cases out instead of stopping the run.

    On construction (main process) every item goes through :func:`check_case` (``check_headers``); the items
    that fail are not part of the dataset and are listed in ``failures`` (``{"case_id", "file", "problem"}``,
    one warning line each; ``allow_missing_modalities`` goes to :func:`check_case`). An item whose ``transform`` raises (in a ``DataLoader`` worker or not) is returned
    as ``{FAILURE_KEY: record}`` instead; :class:`SkippingDataLoader` takes those out of the batches.
    """

    def __init__(
        self,
        data: Sequence,
        transform=None,
        check_headers: bool = True,
        image_key: str = "image",
        label_key: str | None = "label",
        channels: int = 4,
        allow_missing_modalities: bool = False,
    ):
        self.image_key, self.label_key = image_key, label_key
        self.failures: list[dict] = []
        good = []
        for item in data:
            if check_headers:
                try:
                    check_case(item, image_key, label_key, channels, allow_missing_modalities)
                except CaseError as e:
                    self._fail(failure(e.case_id or case_id_of(item, image_key), e.path, e.problem))
                    continue
                except Exception as e:  # an unexpected error about one case must not stop the others
                    self._fail(describe_error(item, e, image_key, label_key))
                    continue
            good.append(item)
        super().__init__(good, transform)

    def _fail(self, record: dict) -> None:
        self.failures.append(record)
        logger.warning("case skipped: %s", format_failure(record))

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as e:
            return {FAILURE_KEY: describe_error(self.data[index], e, self.image_key, self.label_key)}


def is_failure(item) -> bool:
    return isinstance(item, Mapping) and FAILURE_KEY in item


class SkipFailuresCollate:
    """``collate_fn`` that collates the good items (with ``collate_fn``) and attaches the failure records of
    the others under ``FAILURE_KEY`` (a batch of failures only is ``{FAILURE_KEY: [...]}``). Picklable, so it
    works in ``DataLoader`` worker processes."""

    def __init__(self, collate_fn=list_data_collate):
        self.collate_fn = collate_fn

    def __call__(self, batch: list):
        failed = [b[FAILURE_KEY] for b in batch if is_failure(b)]
        good = [b for b in batch if not is_failure(b)]
        out = self.collate_fn(good) if good else {}
        if failed:
            if not isinstance(out, dict):
                raise TypeError(f"SkipFailuresCollate needs dict batches to attach failures, got {type(out).__name__}")
            out = dict(out)
            out[FAILURE_KEY] = failed
        return out


class SkippingDataLoader(Iterable):
    """Iterate a ``DataLoader`` over a :class:`CheckedDataset`, leaving the failed items out of the batches.

    The keyword arguments go to ``monai.data.DataLoader`` (``num_workers`` > 0 works: failures travel in the
    batches as plain records). ``failures`` holds the dataset's header failures, the preprocessing failures
    of the last pass and the predictions that could not be written during it (``scripts.io.FAILED_WRITES``, a
    folder at a prediction's path for example); ``done`` counts the items yielded less those. It deliberately
    has no ``len()``: the number of batches is only known after the pass, and ignite then takes the epoch
    length from the data.
    """

    def __init__(self, dataset, **kwargs):
        kwargs["collate_fn"] = SkipFailuresCollate(kwargs.get("collate_fn") or list_data_collate)
        self.dataset = dataset
        self.loader = DataLoader(dataset, **kwargs)
        self.skipped: list[dict] = []
        self.yielded = 0
        self._writes_from = len(FAILED_WRITES)

    @property
    def write_failures(self) -> list[dict]:
        """The predictions of the last pass that could not be written (``scripts.io.AtomicNibabelWriter``)."""
        return [dict(r) for r in FAILED_WRITES[self._writes_from :]]

    @property
    def failures(self) -> list[dict]:
        return list(getattr(self.dataset, "failures", [])) + list(self.skipped) + self.write_failures

    @property
    def done(self) -> int:
        return self.yielded - len(self.write_failures)

    def __iter__(self) -> Iterator:
        self.skipped, self.yielded, self._writes_from = [], 0, len(FAILED_WRITES)
        for batch in self.loader:
            if isinstance(batch, dict) and FAILURE_KEY in batch:
                batch = dict(batch)
                for record in batch.pop(FAILURE_KEY):
                    self.skipped.append(record)
                    logger.warning("case skipped: %s", format_failure(record))
            if not batch:
                continue
            image = batch.get(self.dataset.image_key) if isinstance(batch, dict) else None
            self.yielded += len(image) if image is not None and hasattr(image, "__len__") else 1
            yield batch


# ----------------------------------------------------------------------------------------- output, report
def _check_output_dir(path) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"output folder {p}: exists but is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"output folder {p}: cannot be created ({e.strerror or e})") from e
    try:
        os.listdir(p)
    except OSError as e:
        raise OutputDirError(f"output folder {p}: not readable ({e.strerror or e})") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputDirError(f"output folder {p}: not writable (permission denied)")
    try:  # os.access can say yes where a write still fails (read-only mounts, ACLs): try one
        fd, tmp = tempfile.mkstemp(prefix=".write_test_", dir=p)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise OutputDirError(f"output folder {p}: not writable ({e.strerror or e})") from e


def output_ids(item: Mapping, image_key: str = "image") -> list[str]:
    """The case ids a prediction of ``item`` can be named after: its ``case_id`` and the id of its first image
    file (what ``scripts.io.case_name_formatter`` names the output after), each once."""
    ids = [case_id_of(item, image_key)]
    files = file_list(item.get(image_key))
    if files and case_id_from_path(files[0]) not in ids:
        ids.append(case_id_from_path(files[0]))
    return ids


INPUT_KEYS = ("image", "label", "reference")
"""The datalist fields that name a workflow's input files (``reference``: the report's segmentation)."""


def input_files(inputs: Iterable, keys: Sequence[str] = INPUT_KEYS) -> dict[str, str]:
    """``{real path: path}`` of every input file of ``inputs`` (datalist items, or plain paths): the files their
    ``keys`` name, and the files directly in a named folder (a DICOM series)."""
    found: dict[str, str] = {}
    for entry in inputs:
        paths = [f for k in keys for f in file_list(entry.get(k))] if isinstance(entry, Mapping) else file_list(entry)
        for f in paths:
            found.setdefault(os.path.realpath(f), f)
            if os.path.isdir(f):
                for child in sorted(os.scandir(f), key=lambda d: d.name):
                    found.setdefault(os.path.realpath(child.path), child.path)
    return found


def check_outputs_spare_inputs(outputs: Iterable[tuple[str, str]], inputs: Iterable, what: str = "the output") -> None:
    """The one check every workflow (inference, evaluating, report, robustness, example, import_studies) makes
    before it writes anything: raise :class:`OutputDirError` (one line, ``owner: input file: problem``) when
    one of its planned ``outputs`` (``(case id or workflow, path)`` pairs) is one of the ``inputs``' files
    (:func:`input_files`; real paths compared, so a symlinked folder is the same folder). Then the input files
    become ``scripts.io.INPUTS``, which ``scripts.io.atomic_path`` never replaces, so an output the plan missed
    cannot overwrite one either."""
    real = input_files(inputs)
    hits = [(owner, real[os.path.realpath(out)], out) for owner, out in outputs if os.path.realpath(out) in real]
    if hits:
        (owner, file, out), more = hits[0], len({h[1] for h in hits}) - 1
        also = f" ({more} more input file(s) likewise)" if more else ""
        raise OutputDirError(
            f"{owner}: {file}: input file would be overwritten by {what} {out}{also}; choose another output folder "
            "(--output_dir)"
        )
    INPUTS.clear()
    INPUTS.update(real)


def prediction_outputs(path, inputs: Iterable, image_key: str = "image") -> list[tuple[str, str]]:
    """``(case id, <path>/<case_id>.nii.gz)`` of every prediction a run over ``inputs`` may write into the
    output folder ``path`` (see :func:`output_ids`)."""
    items = [i for i in inputs if isinstance(i, Mapping)]
    return [(cid, os.path.join(str(path), prediction_name(cid))) for i in items for cid in output_ids(i, image_key)]


def check_no_input_overwrite(path, inputs: Iterable, image_key: str = "image") -> None:
    """Raise :class:`OutputDirError` (one line, ``case: file: problem``) when a prediction written to the
    output folder ``path`` (``<case_id>.nii.gz``, see :func:`output_ids`) would replace one of the ``inputs``'
    files (:func:`check_outputs_spare_inputs`). An output folder that holds inputs is fine as long as no output
    name collides with one of them (a BraTS folder's ``<id>_t1.nii.gz`` files; not a folder of 4D
    ``<id>.nii.gz`` studies)."""
    inputs = list(inputs)
    check_outputs_spare_inputs(prediction_outputs(path, inputs, image_key), inputs, "the prediction")


def check_output_dirs(
    *paths, inputs: Iterable | None = None, outputs: Iterable | None = None, exit_on_error: bool = False
) -> list[str]:
    """Create the output folders if needed and make sure they can be read and written (a probe file is
    created and removed), before any case is processed; with ``inputs`` (the run's datalist items) also refuse
    an output that would overwrite an input file (:func:`check_outputs_spare_inputs`): the ``(owner, path)``
    pairs of ``outputs``, by default the predictions ``<case_id>.nii.gz`` in each of ``paths``. Temporary
    files a killed run left in them are removed (``scripts.io.remove_stale_temporaries``). Raises
    :class:`OutputDirError` with one clear line, or with ``exit_on_error`` (the configs) exits with that line
    and code 1."""
    try:
        if inputs is not None:
            inputs = list(inputs)
            if outputs is None:
                planned = [o for p in paths for o in prediction_outputs(p, inputs)]
                check_outputs_spare_inputs(planned, inputs, "the prediction")
            else:
                check_outputs_spare_inputs(outputs, inputs)
        for p in paths:
            _check_output_dir(p)
            for path in remove_stale_temporaries(str(p), ".*.*.tmp*"):
                logger.warning("removed %s, a temporary file a killed run left", path)
    except OutputDirError as e:
        if exit_on_error:
            raise SystemExit(f"error: {e}") from None
        raise
    return [str(p) for p in paths]


def report(failures: Sequence[Mapping], done: int | None = None, what: str = "processed", stream=None) -> str:
    """The end-of-run report: ``N case(s) found, M <what>, K skipped``, which adds up (``failures`` holds every
    candidate that was not ``what``: a bad datalist entry, a file that belongs to no case, a case that failed
    a check or its processing), then one line per skipped candidate with its reason; printed to ``stream``
    (stdout by default) and returned."""
    lines = []
    if done is not None:
        why = " (reasons below)" if failures else ""
        lines.append(f"{done + len(failures)} case(s) found, {done} {what}, {len(failures)} skipped{why}")
    if failures:
        lines.append(f"{len(failures)} case(s) FAILED (skipped):")
        lines += [f"  {format_failure(f)}" for f in failures]
    text = "\n".join(lines) + ("\n" if lines else "")
    print("\n" + text, end="", file=stream or sys.stdout, flush=True)
    return text


def retire_stale_predictions(folder, failures: Sequence[dict]) -> list[str]:
    """Rename the prediction ``<case_id>.nii.gz`` in ``folder`` of every failed case that this run did not
    write (an earlier run's, ``scripts.io.WRITTEN``) to ``<case_id>.nii.gz.stale``, so it is not scored as if
    the case had been segmented, and add that to the case's failure record; returns the new paths."""
    renamed = []
    for record in failures:
        path = os.path.join(str(folder), prediction_name(record["case_id"]))
        if os.path.isfile(path) and os.path.realpath(path) not in WRITTEN:
            os.replace(path, path + ".stale")
            record["problem"] += f" (its previous prediction is renamed {os.path.basename(path)}.stale)"
            renamed.append(path + ".stale")
    return renamed


def exit_on_failures(
    failures: Sequence[Mapping], done: int | None = None, what: str = "processed", output_dir=None
) -> None:
    """Print the :func:`report`; ``SystemExit(1)`` when any case failed (so ``python -m monai.bundle run``
    exits non-zero after finishing the good cases). With ``output_dir``, the predictions an earlier run left
    there for the failed cases are renamed first (:func:`retire_stale_predictions`)."""
    if output_dir is not None:
        failures = [dict(f) for f in failures]
        retire_stale_predictions(output_dir, failures)
    report(failures, done, what)
    if failures:
        raise SystemExit(1)


__all__ = [
    "FAILURE_KEY",
    "CheckedDataset",
    "OutputDirError",
    "SkipFailuresCollate",
    "SkippingDataLoader",
    "case_id_of",
    "check_case",
    "check_no_input_overwrite",
    "check_output_dirs",
    "check_outputs_spare_inputs",
    "input_files",
    "prediction_outputs",
    "describe_error",
    "exit_on_failures",
    "failure",
    "file_list",
    "format_failure",
    "output_ids",
    "report",
    "retire_stale_predictions",
]
