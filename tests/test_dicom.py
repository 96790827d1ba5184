"""DICOM input: a case as four MR series folders loads through MONAI's ITKReader exactly like the NIfTI files it
was written from (array, affine), and predictions saved from it line up with the series."""

import locale
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, LoadImaged, Orientationd, SaveImage

from scripts.conventions import CLASS_COLOURS, MODALITIES
from scripts.data.checks import CheckedDataset, check_case
from scripts.data.dicom import (
    dicom_seg_to_label,
    find_dicom_cases,
    is_dicom_file,
    label_to_dicom_seg,
    nifti_case_to_dicom,
    nifti_to_dicom_series,
    series_grid,
)
from scripts.data.layouts import detect_layout, find_inference_cases, prepare_datalist
from scripts.io import case_name_formatter
from scripts.synthetic.phantom import write_case
from scripts.transforms import CaseError
from tests._bundle import EXAMPLE_CASE

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning"),  # SWIG (ITK)
    pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader:UserWarning"),  # MONAI, when pydicom is installed
]

SHAPE = (48, 56, 40)
REAL_T1 = EXAMPLE_CASE / "TCGA-DU-7294_t1.nii.gz"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A synthetic NIfTI case and the same case as DICOM series folders ``dicom/case_001/<modality>/``."""
    root = tmp_path_factory.mktemp("dicom")
    files = write_case(str(root / "nifti"), 1, shape=SHAPE)
    niftis = [files[m] for m in MODALITIES]
    dirs = nifti_case_to_dicom(niftis, root / "dicom" / "case_001")
    return root, niftis, [dirs[m] for m in MODALITIES]


def test_writing_dicom_keeps_the_process_locale(tmp_path):
    """GDCM switches the process to the "C" locale while writing tagged DICOM; left that way, every later
    ``open(path, "w")`` in the process would default to ASCII (and fail on text such as "\u00b1")."""
    before = locale.setlocale(locale.LC_ALL)
    files = write_case(str(tmp_path / "nifti"), 2, shape=(16, 16, 16))
    nifti_to_dicom_series(files["t1"], tmp_path / "t1")
    assert locale.setlocale(locale.LC_ALL) == before


def _load(paths, reader=None):
    data = LoadImaged("image", ensure_channel_first=True, reader=reader)({"image": paths})
    return Orientationd("image", axcodes="RAS")(data)["image"]


def test_series_are_valid_mr_slices_with_shared_frame_of_reference(case):
    import SimpleITK as sitk

    _, _, dirs = case
    tags = []
    for d in dirs:
        files = sorted(Path(d).glob("*.dcm"))
        assert len(files) == SHAPE[2]
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        reader.ReadImageInformation()
        tags.append({k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()})
    assert {t["0008|0016"] for t in tags} == {"1.2.840.10008.5.1.4.1.1.4"}  # MR Image Storage
    assert {t["0008|0060"] for t in tags} == {"MR"}
    assert len({t["0020|0052"] for t in tags}) == 1 and len({t["0020|000d"] for t in tags}) == 1
    assert len({t["0020|000e"] for t in tags}) == 4  # four series
    assert all(t["0020|0037"] and t["0020|0032"] and t["0028|0030"] for t in tags)


def test_find_dicom_cases_and_layout_hooks(case, tmp_path):
    root, _, dirs = case
    items = find_dicom_cases(root / "dicom")
    assert items == [{"case_id": "case_001", "image": dirs, "reader": "ITKReader"}]
    assert find_dicom_cases(root / "dicom" / "case_001") == items  # the case folder itself
    assert detect_layout(root / "dicom") == "dicom"
    assert find_inference_cases(root / "dicom") == items
    with pytest.raises(FileNotFoundError, match="no labelled cases in its dicom layout"):
        prepare_datalist(root / "dicom", num_folds=2)  # images only: not filled with synthetic data either
    assert not any((root / "dicom").rglob("*.nii*"))

    # aliases (T1w, T1-Gd, T2w, FLAIR), DICOM files without the .dcm extension
    alias = tmp_path / "study" / "patient_7"
    for name, d in zip(("T1w", "T1-Gd", "T2w", "FLAIR"), dirs):
        shutil.copytree(d, alias / name)
    for f in (alias / "FLAIR").glob("*.dcm"):
        f.rename(f.with_suffix(""))
    assert is_dicom_file(next((alias / "FLAIR").iterdir()))
    found = find_dicom_cases(tmp_path)
    assert [c["case_id"] for c in found] == ["patient_7"]
    assert [Path(p).name for p in found[0]["image"]] == ["T1w", "T1-Gd", "T2w", "FLAIR"]
    shutil.rmtree(alias / "T2w")
    with pytest.raises(FileNotFoundError, match=r"patient_7.*\['t2'\]"):
        find_dicom_cases(tmp_path)


@pytest.mark.parametrize("reader", ["ITKReader", None])  # None: LoadImaged's own choice (the bundle config)
def test_dicom_case_loads_like_the_nifti(case, reader):
    _, niftis, dirs = case
    ref = _load(niftis, reader="NibabelReader")
    img = _load(dirs, reader=reader)
    assert tuple(img.shape) == tuple(ref.shape) == (4, *SHAPE)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(ref))  # int16 data: exact
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-3)
    assert img.meta["filename_or_obj"] == dirs[0]


def test_oblique_anisotropic_float_volume_round_trip(case, tmp_path):
    """Rotated, anisotropic, left-handed voxel grid and non-integer intensities (rescale slope/intercept)."""
    _, niftis, _ = case
    data = nib.load(niftis[0]).get_fdata().astype(np.float32) * 0.37 + 0.1
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.array([[0, -0.9, 0], [1.1, 0, 0], [0, 0, -1.5]])  # det < 0 (radiological)
    affine[:3, 3] = (30.0, -20.0, 5.0)
    src = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    nifti_to_dicom_series(src, tmp_path / "series")
    ref, img = _load(str(src), reader="NibabelReader"), _load(str(tmp_path / "series"), reader="ITKReader")
    assert img.shape == ref.shape
    step = (data.max() - data.min()) / 65535
    np.testing.assert_allclose(np.asarray(img), np.asarray(ref), atol=step)
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-3)


def _save_prediction_like_inference(series_dirs, out_dir):
    """Load a DICOM case, make a prediction in RAS space, invert it to the input grid, save it as NIfTI."""
    pre = Compose([LoadImaged("image", ensure_channel_first=True, reader="ITKReader"), Orientationd("image", "RAS")])
    data = pre({"image": series_dirs})
    image = data["image"]
    pred = MetaTensor((image[:1] > image[:1].float().mean()).to(torch.uint8), meta=dict(image.meta))
    pred.applied_operations = list(image.applied_operations)
    data["pred"] = pred
    inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(data)["pred"]
    saver = SaveImage(
        output_dir=str(out_dir), output_postfix="", separate_folder=False, resample=False,
        output_dtype=np.uint8, output_name_formatter=case_name_formatter,
    )  # fmt: skip
    saver(inv)
    return image


def test_saved_prediction_lines_up_with_the_series(case, tmp_path):
    _, niftis, dirs = case
    _save_prediction_like_inference(dirs, tmp_path)
    out = tmp_path / "case_001.nii.gz"  # named after the case folder, not the series folder "t1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    pred, ref = nib.load(out), nib.load(niftis[0])
    assert pred.shape == ref.shape == SHAPE
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-3)
    t1 = np.asarray(ref.dataobj)
    np.testing.assert_array_equal(np.asarray(pred.dataobj), (t1 > t1.mean()).astype(np.uint8))


def test_real_case_round_trip_keeps_geometry(tmp_path):
    """TCGA-DU-7294 (BraTS preprocessing, LPS, 240 x 240 x 155): NIfTI -> DICOM -> MONAI -> NIfTI."""
    series = tmp_path / "TCGA-DU-7294" / "t1"
    nifti_to_dicom_series(REAL_T1, series, series_description="T1")
    ref = nib.load(REAL_T1)
    loaded = LoadImaged("image", ensure_channel_first=True, reader="ITKReader")({"image": str(series)})["image"]
    np.testing.assert_allclose(np.asarray(loaded.affine), ref.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(loaded[0]), np.asarray(ref.dataobj))
    out = tmp_path / "pred"
    _save_prediction_like_inference([str(series)], out)
    pred = nib.load(out / "TCGA-DU-7294.nii.gz")
    assert pred.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-3)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine) == ("L", "P", "S")


def test_dicom_seg_round_trip(case, tmp_path):
    """Optional DICOM SEG export (highdicom): label -> SEG referencing the T1ce series -> the same label map."""
    hd = pytest.importorskip("highdicom")
    _, niftis, dirs = case
    seg_nifti = niftis[0].replace("_t1.nii.gz", "_seg.nii.gz")
    ref = nib.load(seg_nifti)
    truth = np.asarray(ref.dataobj)
    # the label as a radiological (LAS) NIfTI: flips are undone onto the series grid
    flipped = tmp_path / "seg_las.nii.gz"
    flip_x = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(truth[::-1], ref.affine @ flip_x), flipped)
    out = label_to_dicom_seg(flipped, dirs[1], tmp_path / "seg.dcm", labels=(1, 2, 4))
    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    source = hd.imread(next(Path(dirs[1]).glob("*.dcm")))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence][-1] == "Enhancing tumour"
    # the one colour scheme (scripts.conventions.CLASS_COLOURS) as each segment's recommended display colour
    shown = [
        hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() for s in seg.SegmentSequence
    ]
    assert [tuple(int(v) for v in c) for c in shown] == list(CLASS_COLOURS)
    label, affine = dicom_seg_to_label(out, dirs[1], labels=(1, 2, 4))
    np.testing.assert_array_equal(label, truth)
    np.testing.assert_allclose(affine, ref.affine, atol=1e-3)
    with pytest.raises(ValueError, match="not on the voxel grid"):
        label_to_dicom_seg(_shifted(ref, tmp_path), dirs[1], tmp_path / "x.dcm")


def _shifted(img, tmp_path):
    path = tmp_path / "shifted.nii.gz"
    affine = img.affine.copy()
    affine[:3, 3] += 2.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    return path


# ---------------------------------------------------------------------------------------------- series geometry
def _copy_case(dirs, tmp_path, name="case_002"):
    """The DICOM case copied to ``tmp_path/<name>/<modality>/`` (so a test can take slices away)."""
    out = []
    for mod, d in zip(MODALITIES, dirs):
        shutil.copytree(d, tmp_path / name / mod)
        out.append(str(tmp_path / name / mod))
    return out


def _case_error(series_dirs, case_id="case_002"):
    with pytest.raises(CaseError) as e:
        check_case({"case_id": case_id, "image": series_dirs, "reader": "ITKReader"})
    return e.value


def test_missing_slice_in_every_series_is_an_error_naming_the_folder_and_the_gap(case, tmp_path):
    """Issue 27 item 7: the same middle slice taken from all four series made ITK read each onto an even 1.0x mm
    grid (exit 0, slices misplaced by up to half a slice, only a warning on stderr). Now the case is a failure
    naming the series folder, the two slices around the gap and the spacings; the batch goes on with the rest."""
    _, _, dirs = case
    series = _copy_case(dirs, tmp_path)
    for d in series:
        (Path(d) / "IM0020.dcm").unlink()
    error = _case_error(series)
    assert error.path == series[0] and error.case_id == "case_002"
    assert "T1 series: uneven slice positions: IM0019.dcm and IM0021.dcm are 2 mm apart, the other slices 1 mm" in (
        error.problem
    )
    assert "misplaced by up to 0.5 mm" in error.problem and "\n" not in str(error)
    good = _copy_case(dirs, tmp_path, "case_001")
    items = [{"case_id": c, "image": s, "reader": "ITKReader"} for c, s in (("case_001", good), ("case_002", series))]
    dataset = CheckedDataset(items)
    assert [d["case_id"] for d in dataset.data] == ["case_001"]
    assert dataset.failures == [{"case_id": "case_002", "file": series[0], "problem": error.problem}]


def test_missing_slice_in_one_series_names_that_sequence_with_readable_values(case, tmp_path):
    """A middle slice missing from the T2 series alone names the T2 folder (MONAI blamed the T1 folder with a
    cut-off 4 x 4 matrix); a last slice missing from the FLAIR alone (evenly spaced, one slice short) names the
    FLAIR folder and both grids."""
    _, _, dirs = case
    series = _copy_case(dirs, tmp_path)
    (Path(series[2]) / "IM0020.dcm").unlink()
    error = _case_error(series)
    assert error.path == series[2] and error.problem.startswith("T2 series: uneven slice positions: IM0019.dcm and")
    shutil.rmtree(series[2])
    shutil.copytree(dirs[2], series[2])
    (Path(series[3]) / f"IM{SHAPE[2]:04d}.dcm").unlink()
    error = _case_error(series)
    assert error.path == series[3]
    assert error.problem == (
        f"the FLAIR series is not on the T1 series' grid ({series[0]}): 48 x 56 x 39 voxels (columns x rows x slices) "
        "against 48 x 56 x 40"
    )


def test_a_repeated_slice_or_a_second_series_in_one_folder_is_an_error(case, tmp_path):
    """A slice copied under a second name (two slices at one position) and a folder holding two series (ITK read
    the first one only, with a warning) are errors naming the folder, not a silently different volume."""
    _, _, dirs = case
    series = _copy_case(dirs, tmp_path)
    shutil.copy(Path(series[1]) / "IM0007.dcm", Path(series[1]) / "IM0007-copy.dcm")
    error = _case_error(series)
    assert error.path == series[1]
    assert error.problem.startswith("T1ce series: IM0007") and "lie at the same slice position (6 mm" in error.problem
    (Path(series[1]) / "IM0007-copy.dcm").unlink()
    for f in Path(dirs[3]).glob("*.dcm"):
        shutil.copy(f, Path(series[1]) / f"flair-{f.name}")
    error = _case_error(series)
    assert error.path == series[1] and error.problem.startswith("T1ce series: holds 2 DICOM series (2.25.")
    assert error.problem.endswith("; keep one per folder")


def test_series_grid_is_the_grid_itk_reads(case, tmp_path):
    """:func:`series_grid` (slice headers only) gives the affine and shape MONAI's ITKReader loads, for the axial
    int16 series and for an oblique, anisotropic float series (GDCM's Enhanced MR files)."""
    _, niftis, dirs = case
    grid = series_grid(dirs[0])
    loaded = LoadImaged("image", ensure_channel_first=True, reader="ITKReader")({"image": dirs[0]})["image"]
    assert grid.shape == SHAPE == tuple(loaded.shape[1:])
    np.testing.assert_allclose(grid.affine, np.asarray(loaded.affine), atol=1e-4)
    affine = np.eye(4)
    th = 0.3
    affine[:3, :3] = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) @ np.diag(
        [0.9, 1.1, -1.5]
    )
    src = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 8), np.float32), affine), src)
    nifti_to_dicom_series(src, tmp_path / "oblique")
    grid = series_grid(tmp_path / "oblique")
    loaded = LoadImaged("image", ensure_channel_first=True, reader="ITKReader")({"image": str(tmp_path / "oblique")})
    assert grid.shape == tuple(loaded["image"].shape[1:]) == (12, 10, 8)
    np.testing.assert_allclose(grid.affine, np.asarray(loaded["image"].affine), atol=1e-4)
    np.testing.assert_allclose(grid.spacing, (0.9, 1.1, 1.5), atol=1e-5)


def test_one_file_given_for_several_sequences_is_a_warning_naming_case_and_file(case, tmp_path, caplog):
    """Issue 27: one file given for all four sequences (the same path four times, or one file under four names)
    was segmented without a word. Now one warning line names the case, the file and the sequences; a case of
    four different files, and a case whose missing sequences are allowed, get none."""
    _, niftis, _ = case
    for name in ("t1", "t1ce", "t2", "flair"):
        (tmp_path / f"x_{name}.nii.gz").symlink_to(niftis[0])
    linked = [str(tmp_path / f"x_{name}.nii.gz") for name in ("t1", "t1ce", "t2", "flair")]
    caplog.set_level(logging.WARNING, logger="scripts.data.checks")
    for image in ([niftis[0]] * 4, linked):
        caplog.clear()
        check_case({"case_id": "x", "image": image})
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            f"case x: {image[0]}: one file given as T1, T1ce, T2 and FLAIR (all four sequences); the network sees "
            "4 copies of one sequence"
        ]
    caplog.clear()
    check_case({"case_id": "y", "image": [niftis[0], niftis[1], niftis[0], niftis[3]]})
    assert [r.getMessage() for r in caplog.records] == [
        f"case y: {niftis[0]}: one file given as T1 and T2 (different sequences); the network sees 2 copies of one "
        "sequence"
    ]
    caplog.clear()
    check_case({"case_id": "z", "image": niftis})
    missing = [niftis[0], str(tmp_path / "none_t1ce.nii.gz"), str(tmp_path / "none_t2.nii.gz"), niftis[3]]
    check_case({"case_id": "z", "image": missing}, allow_missing_modalities=True)
    assert not caplog.records
