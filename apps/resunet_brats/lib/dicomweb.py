"""MONAI Label over a DICOMweb PACS (``--studies http://127.0.0.1:8042/dicom-web``) for a four-sequence model.

MONAI Label's stock DICOMweb datastore serves one image per series; this model needs the four MR series of a
study as one four-channel input. :class:`StudyDICOMwebDatastore` serves one image per study:

- the image id is the StudyInstanceUID; any SeriesInstanceUID of the study is accepted for it too (OHIF's MONAI
  Label panel sends the series on display);
- the study's MR series are recognised by series description (:func:`sequence_of`: ``T1``, ``T1CE``/``T1 post
  Gd``, ``T2``, ``FLAIR``...), each downloaded once into the cache, checked (evenly spaced slices, no gaps in
  the instance numbers, the four on one voxel grid) and stacked in the bundle's channel order
  (``scripts.conventions.MODALITIES``) into one 4D NIfTI that the bundle's configs read as they read any 4D
  study;
- a missing, unrecognised or ambiguous sequence, a series with missing slices, an unknown id and an unreachable
  PACS are each one HTTP error with a one-line ``detail`` (422, 422, 422, 404, 503); other studies are served;
- with ``--conf allow_missing_modalities true`` a study needs any one of the four series: each missing one is an
  all-zero channel of the combined image, which the bundle's inference imputes (the result names them);
- an automatic segmentation and a saved final label are stored back in the PACS as DICOM SEG objects
  (:mod:`.dicom_seg`) referencing the series the client showed (for a study id its T1ce series, or without one
  its FLAIR, T2 or T1 series); nothing else is written to the PACS. A saved final label is kept in the cache as
  the training label of its study.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading

import numpy as np
import requests
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import strtobool
from pydicom.dataset import Dataset

from scripts.conventions import BRATS2020_LABELS, MODALITIES, MODALITY_NAMES, modality_of
from scripts.io import write_nifti

from .dicom_seg import on_series_grid, series_grid, write_label_seg

logger = logging.getLogger(__name__)

REFERENCE = ("t1ce", "flair", "t2", "t1")
"""The series a SEG references when the client names the study rather than one of its series: the first of these
the study has (T1ce; a study without T1ce, served with ``allow_missing_modalities``, the next)."""
SERIES_FIELDS = ["SeriesDescription", "SeriesNumber", "Modality", "NumberOfSeriesRelatedInstances"]
_CONTRAST = {"post", "gd", "gad", "gado", "ce", "c+", "contrast", "postcontrast", "enhanced", "+c"}
_NAME = dict(zip(MODALITIES, MODALITY_NAMES))


def sequence_of(description: str) -> str | None:
    """The bundle modality a series description names: ``"T1CE"``/``"AX T1 POST GD"`` -> ``"t1ce"``, ``"T2
    FLAIR"`` -> ``"flair"``, ``"T2w"`` -> ``"t2"``; ``None`` when it names none (or is a derived map)."""
    text = str(description or "").lower()
    if modality_of(text):
        return modality_of(text)
    words = [w for w in re.split(r"[\s_\-/()\[\],.]+", text) if w]
    if any(modality_of(w) == "flair" for w in words) or "flair" in text:
        return "flair"
    if any(modality_of(w) == "t1ce" for w in words):
        return "t1ce"
    if any(w.startswith("t1") or w == "mprage" for w in words):
        return "t1ce" if any(w in _CONTRAST for w in words) or "+c" in text else "t1"
    if any(modality_of(w) == "t2" for w in words):
        return "t2"
    return None


class StudyError(HTTPException):
    """A study that cannot be served: HTTP ``status`` with a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(status_code=status, detail=detail)


def _series_label(row: dict) -> str:
    return f"#{row.get('SeriesNumber', '?')} '{row.get('SeriesDescription', '')}' ({row['SeriesInstanceUID']})"


def pick_series(study: str, rows: list[dict], allow_missing: bool = False) -> dict[str, dict]:
    """``{modality: series row}`` for the four MR series of ``study`` (rows: QIDO series attributes), or
    :class:`StudyError` (422) naming what is missing, ambiguous or unrecognised. ``allow_missing``: any
    non-empty subset of the four is enough (the others are imputed)."""
    found: dict[str, list[dict]] = {}
    other = []
    for row in rows:
        if row.get("Modality") != "MR":
            continue
        mod = sequence_of(row.get("SeriesDescription", ""))
        (found.setdefault(mod, []) if mod else other).append(row)
    dup = {m: rs for m, rs in found.items() if len(rs) > 1}
    if dup:
        m, rs = next(iter(dup.items()))
        raise StudyError(
            422,
            f"study {study}: {len(rs)} {_NAME[m]} series ({', '.join(_series_label(r) for r in rs)}): "
            f"ambiguous; keep one {_NAME[m]} series in the study or rename the others",
        )
    missing = [_NAME[m] for m in MODALITIES if m not in found]
    if missing and not (allow_missing and found):
        have = [f"{_NAME[m]} {_series_label(found[m][0])}" for m in MODALITIES if m in found]
        unknown = f"; unrecognised: {', '.join(_series_label(r) for r in other)}" if other else ""
        need = (
            "the model needs at least one of T1, T1ce, T2 and FLAIR"
            if allow_missing
            else "the model needs T1, T1ce, T2 and FLAIR (or the server started with --conf "
            "allow_missing_modalities true)"
        )
        raise StudyError(
            422,
            f"study {study}: no {', '.join(missing)} series (found {', '.join(have) or 'no MR series'}{unknown}); "
            f"{need}, recognised by series description",
        )
    return {m: found[m][0] for m in MODALITIES if m in found}


def check_slices(datasets, what: str) -> None:
    """:class:`StudyError` (422) when the sorted single-frame headers of a series have gaps: unevenly spaced
    slice positions, repeated positions or missing instance numbers."""
    if len(datasets) < 2:
        raise StudyError(422, f"{what}: {len(datasets)} slice(s); a volume needs at least 2")
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    gaps = np.diff([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds in datasets])
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > 0.1 * abs(step)) if step > 0 else np.arange(gaps.size)
    if bad.size:
        k = int(bad[0])
        raise StudyError(
            422,
            f"{what}: slices {k + 1} and {k + 2} of {len(datasets)} are {gaps[k]:.2f} mm apart where the others are "
            f"{step:.2f} mm apart: about {max(round(gaps[k] / step) - 1, 1) if step > 0 else '?'} slice(s) missing "
            "or repeated; send the complete series again",
        )
    numbers = sorted(int(ds.InstanceNumber) for ds in datasets if "InstanceNumber" in ds)
    if len(numbers) == len(datasets) and numbers[-1] - numbers[0] + 1 != len(numbers):
        raise StudyError(
            422,
            f"{what}: instance numbers {numbers[0]}..{numbers[-1]} but {len(numbers)} slices: slices missing; "
            "send the complete series again",
        )


def read_volume(series_dir: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed column, row, slice with the rescale applied, RAS affine) of a checked series folder."""
    import pydicom
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    datasets, affine, _ = series_grid(series_dir)
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise StudyError(422, f"{what}: multi-frame instances are not supported; send single-frame MR images")
    check_slices(datasets, what)
    slices = []
    for ds in datasets:
        full = pydicom.dcmread(ds.filename)
        slices.append(np.asarray(apply_modality_lut(full.pixel_array, full), dtype=np.float32).T)
    return np.stack(slices, axis=-1), affine


def _row(dataset_json: dict) -> dict:
    ds = Dataset.from_json(dataset_json)
    return {k: "" if ds.get(k) is None else str(ds.get(k)) for k in ("SeriesInstanceUID", *SERIES_FIELDS)}


class StudyDICOMwebDatastore(DICOMWebDatastore):
    """One image per study of a DICOMweb server: the four MR series combined (module docstring)."""

    def __init__(self, url: str, cache_path: str | None = None, allow_missing: bool = False):
        client = DICOMwebClientX(
            url=url,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        super().__init__(client, {"Modality": "MR"}, cache_path=cache_path, convert_to_nifti=True)
        self._lock = threading.RLock()
        self.allow_missing = allow_missing

    @contextlib.contextmanager
    def _pacs(self, what: str):
        """PACS errors as one-line HTTP errors: 503 unreachable, 502 an error answer."""
        try:
            yield
        except requests.exceptions.ConnectionError as e:
            raise StudyError(503, f"the PACS at {self._client.base_url} is not reachable ({what}): {e}") from None
        except requests.exceptions.Timeout:
            raise StudyError(503, f"the PACS at {self._client.base_url} did not answer in time ({what})") from None
        except requests.exceptions.HTTPError as e:
            raise StudyError(502, f"the PACS at {self._client.base_url} answered {e} ({what})") from None

    def list_images(self) -> list[str]:
        with self._pacs("listing studies"):
            series = self._client.search_for_series(search_filters={"Modality": "MR"}, fields=["StudyInstanceUID"])
        return sorted({str(Dataset.from_json(s).StudyInstanceUID) for s in series})

    def study_of(self, image_id: str) -> tuple[str, str | None]:
        """(StudyInstanceUID, SeriesInstanceUID or None) for an image id naming a study or one of its series."""
        with self._pacs(f"looking up {image_id}"):
            if self._client.search_for_studies(search_filters={"StudyInstanceUID": image_id}):
                return image_id, None
            found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
        if not found:
            raise StudyError(404, f"{image_id}: no such study or series in the PACS at {self._client.base_url}")
        return str(Dataset.from_json(found[0]).StudyInstanceUID), image_id

    def study_series(self, study: str) -> dict[str, dict]:
        """``{modality: series row}`` of the study (:func:`pick_series`)."""
        with self._pacs(f"listing the series of study {study}"):
            rows = [_row(s) for s in self._client.search_for_series(study, fields=SERIES_FIELDS)]
        return pick_series(study, rows, self.allow_missing)

    def series_dir(self, study: str, series: str) -> str:
        """The series' instances in the cache (downloaded once, into a temporary folder renamed when complete)."""
        folder = os.path.join(self._datastore.image_path(), ".series", series)
        if not os.path.isdir(folder):
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            partial = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(folder))
            try:
                with self._pacs(f"downloading series {series}"):
                    dicom_web_download_series(study, series, partial, self._client)
                os.replace(partial, folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return folder

    def get_image_uri(self, image_id: str) -> str:
        """The study's four series stacked into ``<cache>/<StudyInstanceUID>.nii.gz`` (made once per set of
        series: a study whose series change in the PACS is combined again); with ``allow_missing`` a missing
        series is an all-zero channel, which the bundle's inference imputes."""
        study, _ = self.study_of(image_id)
        with self._lock:
            series = self.study_series(study)
            uids = {m: row["SeriesInstanceUID"] for m, row in series.items()}
            cached = LocalDatastore.get_image_info(self, study)
            if cached.get("series") == uids and os.path.isfile(cached.get("path", "")):
                return cached["path"]
            volumes = {
                m: read_volume(
                    self.series_dir(study, uids[m]), f"study {study}: {_NAME[m]} series {_series_label(row)}"
                )
                for m, row in series.items()
            }
            self._check_grid(study, volumes)
            first = next(iter(volumes.values()))
            data = np.stack([volumes[m][0] if m in volumes else np.zeros_like(first[0]) for m in MODALITIES], -1)
            integral = np.array_equal(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767
            with tempfile.TemporaryDirectory(dir=self._datastore.image_path(), prefix=".combine-") as tmp:
                path = write_nifti(
                    data,
                    os.path.join(tmp, f"{study}.nii.gz"),
                    np.int16 if integral else np.float32,
                    first[1],
                )
                missing = [m for m in MODALITIES if m not in uids]
                info = {"series": uids, "StudyInstanceUID": study, "channels": list(MODALITY_NAMES), "missing": missing}
                LocalDatastore.add_image(self, study, path, info)
            names = " ".join(f"{_NAME[m]}={uids.get(m, 'missing (zero channel)')}" for m in MODALITIES)
            logger.info(f"study {study}: {names} -> {data.shape}")
            return LocalDatastore.get_image_uri(self, study)

    @staticmethod
    def _check_grid(study: str, volumes: dict) -> None:
        """:class:`StudyError` (422) unless every series is on the voxel grid of the first (in T1, T1ce, T2, FLAIR
        order)."""
        first, *others = [m for m in MODALITIES if m in volumes]
        data0, affine0 = volumes[first]
        for m in others:
            data, affine = volumes[m]
            if data.shape != data0.shape or not np.allclose(affine, affine0, atol=1e-3):
                raise StudyError(
                    422,
                    f"study {study}: the {_NAME[m]} series ({'x'.join(map(str, data.shape))}) is not on the voxel grid of "
                    f"the {_NAME[first]} series ({'x'.join(map(str, data0.shape))}); the series must share one grid "
                    "(resampling is not done here)",
                )

    def reference_dir(self, image_id: str) -> tuple[str, str]:
        """(study, cached folder of the series a SEG references): the series ``image_id`` names if it is one of
        the study's series, else the study's first :data:`REFERENCE` series."""
        study, series = self.study_of(image_id)
        uids = LocalDatastore.get_image_info(self, study).get("series") or {}
        if not uids:
            self.get_image_uri(study)
            uids = LocalDatastore.get_image_info(self, study)["series"]
        ref = series if series in uids.values() else uids[next(m for m in REFERENCE if m in uids)]
        return study, self.series_dir(study, ref)

    def read_label(self, label_file: str, series_dir: str) -> np.ndarray:
        """A label map file (NIfTI, NRRD... with its geometry, or OHIF's raw ``.bin`` of the series' voxels) on
        the series grid, indexed (column, row, slice); :class:`StudyError` (422) for another grid or values
        other than 0 and the bundle's BraTS labels."""
        from monai.transforms import LoadImage

        _, _, shape = series_grid(series_dir)
        try:
            if label_file.endswith(".bin"):
                raw = np.fromfile(label_file, dtype=np.uint8)
                if raw.size != int(np.prod(shape)):
                    raise ValueError(f"{raw.size} voxels, the series has {'x'.join(map(str, shape))}")
                data = raw.reshape(shape, order="F")
            else:
                img = LoadImage(image_only=True)(label_file)
                data = on_series_grid(np.asarray(img).squeeze(), np.asarray(img.affine), series_dir)
        except ValueError as e:
            raise StudyError(422, f"label {os.path.basename(label_file)}: {e}") from None
        unknown = sorted(set(np.unique(data).tolist()) - {0, *BRATS2020_LABELS})
        if unknown:
            raise StudyError(
                422, f"label values {unknown} are not BraTS labels 0, {', '.join(map(str, BRATS2020_LABELS))}"
            )
        return data.astype(np.uint8)

    def store_seg(self, image_id: str, label_file: str, description: str, manual: bool) -> tuple[str, str]:
        """Write ``label_file`` as a DICOM SEG referencing the series (:meth:`reference_dir`) and send it to the
        PACS; returns (study, SEG SeriesInstanceUID), the SEG's series UID empty for an empty label map."""
        study, ref = self.reference_dir(image_id)
        data = self.read_label(label_file, ref)
        if not np.any(data):
            logger.info(f"study {study}: empty label map, no DICOM SEG stored")
            return study, ""
        import pydicom

        with tempfile.TemporaryDirectory() as tmp:
            seg = pydicom.dcmread(write_label_seg(data, ref, os.path.join(tmp, "seg.dcm"), description, manual=manual))
        with self._pacs(f"storing the DICOM SEG of study {study}"):
            self._client.store_instances([seg])
        logger.info(f"study {study}: DICOM SEG {seg.SeriesInstanceUID} ({description}) stored in the PACS")
        return study, str(seg.SeriesInstanceUID)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = ""):
        """Keep the label in the cache (a ``final`` one is a training label of the study) as a NIfTI on the
        study's grid; a ``final`` one also goes to the PACS as a DICOM SEG (manual)."""
        study, ref = self.reference_dir(image_id)
        data = self.read_label(label_filename, ref)
        info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL:
            _, info["SeriesInstanceUID"] = self.store_seg(image_id, label_filename, "MONAI Label final label", True)
        _, affine, _ = series_grid(ref)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_nifti(data, os.path.join(tmp, f"{study}.nii.gz"), np.uint8, affine)
            return LocalDatastore.save_label(self, study, path, label_tag, info)

    def get_labeled_images(self, label_tag: str | None = None, labels: list | None = None) -> list[str]:
        return LocalDatastore.get_labeled_images(self, label_tag or DefaultLabelTag.FINAL, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list | None = None) -> list[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [s for s in self.list_images() if s not in labelled]

    def get_image_info(self, image_id: str) -> dict:
        return LocalDatastore.get_image_info(self, self.study_of(image_id)[0])

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        return LocalDatastore.get_label_uri(self, self.study_of(label_id)[0], label_tag)

    def status(self) -> dict:
        """``/info/``'s datastore summary; an unreachable PACS is reported in it (``pacs``), not raised."""
        try:
            total, pacs = len(self.list_images()), "reachable"
        except StudyError as e:
            total, pacs = len(self._datastore.objects), e.detail
        tags: dict = {}
        for obj in self._datastore.objects.values():
            for tag in obj.labels:
                tags[tag] = tags.get(tag, 0) + 1
        return {"total": total, "completed": len(self.get_labeled_images()), "label_tags": tags, "pacs": pacs}

    def datalist(self, full_path=True) -> list[dict]:
        """The studies with a saved final label: their combined 4D image and label in the cache."""
        return LocalDatastore.datalist(self, full_path)


class DICOMwebStudiesApp:
    """Mixin for the MONAI Label app (before ``MONAILabelApp``): ``--studies http(s)://...`` gives a
    :class:`StudyDICOMwebDatastore`, and each automatic segmentation of a PACS study is stored in the PACS as a
    DICOM SEG (its SeriesInstanceUID in the answer's ``params["dicom_seg"]``)."""

    def init_remote_datastore(self):
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        allow_missing = strtobool(self.conf.get("allow_missing_modalities", "false"))
        logger.info(
            f"DICOMweb studies ({'any of the four' if allow_missing else 'four'} MR series per study): {self.studies}"
        )
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        return StudyDICOMwebDatastore(self.studies, cache, allow_missing)

    def infer(self, request, datastore=None):
        result = super().infer(request, datastore)
        store = datastore or self.datastore()
        image = request.get("image")
        task = self._infers.get(request.get("model"))
        automatic = task is not None and task.type == InferType.SEGMENTATION
        if isinstance(store, StudyDICOMwebDatastore) and automatic and isinstance(image, str) and result.get("file"):
            if not os.path.exists(image):  # a PACS study, not an uploaded file
                _, seg = store.store_seg(image, result["file"], f"{request['model']} automatic segmentation", False)
                if isinstance(result.get("params"), dict):
                    result["params"]["dicom_seg"] = seg
        return result
