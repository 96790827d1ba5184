"""Every dataset layout -> the same datalist, channels and regions.

Tiny trees are built in each layout (BraTS 2020 training + validation, BraTS 2023+ ``-t1n/-t1c/-t2w/-t2f``,
MSD Task01 4D images) from the synthetic generator; each case is loaded the way the bundle loads it
(LoadImaged(ensure_channel_first) + Orientationd + SelectChannelsd + LabelToRegionsd) and compared voxel
by voxel with the generator's own T1/T1ce/T2/FLAIR arrays and with TC/WT/ET computed from its BraTS-2020
ground truth (1 necrotic, 2 oedema, 4 enhancing).
"""

import functools
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, decollate_batch
from monai.transforms import (
    AsDiscreted,
    Compose,
    CopyItemsd,
    CropForegroundd,
    Invertd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    Spacingd,
)

from scripts.conventions import MODALITIES, case_id_from_path
from scripts.data.layouts import (
    detect_layout,
    find_brats2020_cases,
    find_brats2021_cases,
    find_cases,
    find_inference_cases,
    find_msd_cases,
    load_datalist,
    main,
    prepare_datalist,
)
from scripts.io import case_name_formatter
from scripts.synthetic.phantom import generate_case, write_case
from scripts.transforms import LabelToRegionsd, RegionsToLabeld, SelectChannelsd

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader:UserWarning")  # MONAI + pydicom

SHAPE = (48, 56, 40)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
MSD_DATASET_JSON = {
    "name": "BRATS",
    "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    "numTraining": 2,
    "numTest": 1,
    "training": [
        {"image": f"./imagesTr/BRATS_00{i}.nii.gz", "label": f"./labelsTr/BRATS_00{i}.nii.gz"} for i in (1, 2)
    ],
    "test": ["./imagesTs/BRATS_003.nii.gz"],
}


@functools.cache
def _case(index):
    return generate_case(index, seed=0, shape=SHAPE)


def _save(array, path, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), AFFINE), path)


def _relabel(seg, mapping):
    out = np.zeros_like(seg)
    for src, dst in mapping.items():
        out[seg == src] = dst
    return out


def _regions(seg):
    """TC, WT, ET from the generator's BraTS-2020 labels (1 necrotic, 2 oedema, 4 enhancing)."""
    return np.stack([(seg == 1) | (seg == 4), seg > 0, seg == 4]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- trees
def _brats2020_tree(root):
    for i in (1, 2):
        write_case(str(root / "MICCAI_BraTS2020_TrainingData"), i, shape=SHAPE)
    files = write_case(str(root / "MICCAI_BraTS2020_ValidationData"), 3, shape=SHAPE, prefix="BraTS20_Validation_")
    (root / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_003" / "BraTS20_Validation_003_seg.nii.gz").unlink()
    (root / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    return files


def _brats2021_tree(root):
    suffix = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    for i in (1, 2, 3):
        cid = f"BraTS-GLI-{i:05d}-000"
        folder = root / ("ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData" if i == 3 else "TrainingData") / cid
        case = _case(i)
        for m in MODALITIES:
            _save(case[m], folder / f"{cid}-{suffix[m]}.nii.gz", np.int16)
        if i != 3:
            _save(_relabel(case["seg"], {1: 1, 2: 2, 4: 3}), folder / f"{cid}-seg.nii.gz", np.uint8)
    junk = root / "__MACOSX" / "TrainingData" / "BraTS-GLI-00009-000"
    junk.mkdir(parents=True)
    (junk / "._BraTS-GLI-00009-000-t1c.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # archive debris


def _msd_tree(root):
    task = root / "Task01_BrainTumour"
    for i in (1, 2, 3):
        case = _case(i)
        four_d = np.stack([case["flair"], case["t1"], case["t1ce"], case["t2"]], axis=-1)
        subset = "imagesTs" if i == 3 else "imagesTr"
        _save(four_d, task / subset / f"BRATS_{i:03d}.nii.gz", np.int16)
        if i != 3:
            _save(_relabel(case["seg"], {1: 2, 2: 1, 4: 3}), task / "labelsTr" / f"BRATS_{i:03d}.nii.gz", np.uint8)
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # ships in the MSD tar
    (task / "dataset.json").write_text(json.dumps(MSD_DATASET_JSON))
    return task


WRITERS = {"brats2020": _brats2020_tree, "brats2021": _brats2021_tree, "msd": _msd_tree}
OWN_LABELS = {"brats2020": {1: 1, 2: 2, 4: 4}, "brats2021": {1: 1, 2: 2, 4: 3}, "msd": {1: 2, 2: 1, 4: 3}}
"""generator label (BraTS 2020) -> the layout's own label value."""
CASE_INDEX = {  # case id -> generator index
    "BraTS20_Training_001": 1, "BraTS20_Training_002": 2, "BraTS20_Validation_003": 3,
    "BraTS-GLI-00001-000": 1, "BraTS-GLI-00002-000": 2, "BraTS-GLI-00003-000": 3,
    "BRATS_001": 1, "BRATS_002": 2, "BRATS_003": 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    for name, writer in WRITERS.items():
        writer(base / name)
    return base


def _preprocessing():
    """The bundle's loading steps, layout-independent: every convention comes from the item."""
    return Compose(
        [
            LoadImaged(["image", "label"], ensure_channel_first=True, allow_missing_keys=True),
            Orientationd(["image", "label"], axcodes="RAS", allow_missing_keys=True),
            SelectChannelsd("image", order_key="channel_order"),
            LabelToRegionsd("label", labels=(1, 2, 4), labels_key="labels", allow_missing_keys=True),
        ]
    )


def _check_item(loaded):
    case = _case(CASE_INDEX[loaded["case_id"]])
    image = loaded["image"]
    assert tuple(image.shape) == (4, *SHAPE)
    for c, m in enumerate(MODALITIES):  # bundle channel order T1, T1ce, T2, FLAIR
        np.testing.assert_array_equal(np.asarray(image[c]), case[m], err_msg=f"{loaded['case_id']} channel {c} ({m})")
    np.testing.assert_allclose(np.asarray(image.affine), AFFINE, atol=1e-6)
    if "label" in loaded:
        regions = np.asarray(loaded["label"])
        expected = _regions(case["seg"])
        assert expected[2].sum() > 0 and (expected[0] != expected[2]).any()  # all three regions are non-trivial
        for r, name in enumerate(("TC", "WT", "ET")):
            np.testing.assert_array_equal(regions[r], expected[r], err_msg=f"{loaded['case_id']} {name}")


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["brats2020", "brats2021", "msd"])
def test_detect_layout(trees, layout):
    assert detect_layout(trees / layout) == layout
    assert find_cases(trees / layout)[0] == layout


def test_detect_layout_sub_folders_and_nothing(trees, tmp_path):
    task = trees / "msd" / "Task01_BrainTumour"
    assert detect_layout(task) == "msd" and detect_layout(task / "imagesTs") == "msd"
    assert [c["case_id"] for c in find_msd_cases(task / "imagesTs")] == ["BRATS_003"]
    assert detect_layout(trees / "brats2020" / "MICCAI_BraTS2020_ValidationData") == "brats2020"
    assert detect_layout(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no cases of a known layout"):
        find_cases(tmp_path)


def test_mixed_brats_namings_are_ambiguous(trees, tmp_path):
    write_case(str(tmp_path / "a"), 1, shape=(16, 16, 16))
    _save(np.zeros((2, 2, 2)), tmp_path / "b" / "X-t1c.nii.gz", np.int16)
    with pytest.raises(ValueError, match="brats2021 and brats2020"):
        detect_layout(tmp_path)
    assert find_cases(tmp_path, "brats2020")[1][0]["case_id"] == "BraTS20_Training_001"


@pytest.mark.parametrize("layout", ["brats2020", "brats2021", "msd"])
def test_training_datalist_regions_match_ground_truth(trees, layout):
    datalist = prepare_datalist(trees / layout, fold=0, num_folds=2, seed=0)
    items = datalist["training"] + datalist["validation"]
    assert sorted(CASE_INDEX[c["case_id"]] for c in items) == [1, 2]  # labelled cases only
    assert all("label" in c and len(c["labels"]) == 3 for c in items)
    preprocessing = _preprocessing()
    for item in items:
        _check_item(preprocessing(item))


@pytest.mark.parametrize("layout", ["brats2020", "brats2021", "msd"])
def test_inference_cases_include_unlabelled_and_load_in_bundle_order(trees, layout):
    cases = find_inference_cases(trees / layout)
    assert sorted(CASE_INDEX[c["case_id"]] for c in cases) == [1, 2, 3]
    assert not any("label" in c for c in cases)
    unlabelled = next(c for c in cases if CASE_INDEX[c["case_id"]] == 3)
    _check_item(_preprocessing()(unlabelled))


def test_layout_items(trees):
    b20 = find_brats2020_cases(trees / "brats2020")
    assert [c["case_id"] for c in b20] == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Validation_003"]
    assert "label" not in b20[2] and b20[0]["labels"] == [1, 2, 4]
    b21 = find_brats2021_cases(trees / "brats2021")  # the __MACOSX debris is skipped
    assert [c["case_id"] for c in b21] == [f"BraTS-GLI-0000{i}-000" for i in (1, 2, 3)]
    assert [p.rsplit("-", 1)[1] for p in b21[0]["image"]] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]
    assert b21[0]["label"].endswith("-seg.nii.gz") and b21[0]["labels"] == [1, 2, 3] and "label" not in b21[2]
    msd = find_msd_cases(trees / "msd")  # the task's parent folder also works; ._BRATS_001 is skipped
    assert [c["case_id"] for c in msd] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert msd[0]["channel_order"] == [1, 2, 3, 0] and msd[0]["labels"] == [2, 1, 3]
    assert msd[0]["label"].endswith("labelsTr/BRATS_001.nii.gz") and "label" not in msd[2]


def test_msd_conventions_follow_dataset_json(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    _save(np.zeros((2, 2, 2, 4)), task / "imagesTr" / "BRATS_001.nii.gz", np.int16)
    meta = dict(MSD_DATASET_JSON, modality={"0": "T2w", "1": "FLAIR", "2": "T1w", "3": "T1gd"},
                labels={"0": "background", "1": "enhancing tumour", "2": "edema", "3": "necrosis"})  # fmt: skip
    (task / "dataset.json").write_text(json.dumps(meta))
    item = find_msd_cases(task)[0]
    assert item["channel_order"] == [2, 3, 0, 1] and item["labels"] == [3, 2, 1]


def test_predictions_written_back_in_each_layouts_own_labels(trees):
    """Regions -> the item's own label values, after a DataLoader round trip (collate + decollate) of the
    item's ``labels`` field, as in the bundle's inference postprocessing."""
    items = []
    for layout in WRITERS:
        items += [c for c in find_cases(trees / layout)[1] if "label" in c][:1]
    loader = DataLoader(Dataset(items, _preprocessing()), batch_size=1, num_workers=0)
    to_label = RegionsToLabeld("label", labels=(1, 2, 4), labels_key="labels")
    seen = set()
    for batch in loader:
        (item,) = decollate_batch(batch)
        own = np.asarray(to_label(item)["label"])[0]
        index = CASE_INDEX[item["case_id"]]
        layout = next(k for k in WRITERS if item["image"].meta["filename_or_obj"].startswith(str(trees / k)))
        np.testing.assert_array_equal(own, _relabel(_case(index)["seg"], OWN_LABELS[layout]))
        seen.add(layout)
    assert seen == set(WRITERS)


def test_transforms_without_item_conventions_behave_as_before():
    img = torch.arange(4.0)[:, None, None, None].expand(4, 2, 2, 2).clone()
    assert SelectChannelsd("image")({"image": img})["image"] is img  # no channel_order: no-op
    decollated = [torch.tensor(1), torch.tensor(2), torch.tensor(3), torch.tensor(0)]  # after a DataLoader round trip
    out = SelectChannelsd("image")({"image": img, "channel_order": decollated})
    assert out["image"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="out of range"):
        SelectChannelsd("image")({"image": img, "channel_order": [0, 1, 2, 7]})
    lab = torch.zeros(1, 4, 4, 4)
    lab[0, 0] = 4
    lab[0, 1] = 1
    lab[0, 2] = 2
    plain = LabelToRegionsd("label")({"label": lab})["label"]
    assert torch.equal(
        LabelToRegionsd("label", labels_key="labels")({"label": lab})["label"], plain
    )  # no "labels": (1, 2, 4)
    msd = LabelToRegionsd("label", labels_key="labels")({"label": lab, "labels": torch.tensor([4, 2, 1])})["label"]
    assert msd[2].sum() == lab[0].eq(1).sum()  # ET from the item's convention (enhancing = 1)
    with pytest.raises(ValueError, match="outside the expected set"):
        LabelToRegionsd("label", labels_key="labels")({"label": lab, "labels": [1, 2, 3]})


def test_brats2020_validation_only_folder(trees, tmp_path):
    val = trees / "brats2020" / "MICCAI_BraTS2020_ValidationData"
    with pytest.raises(FileNotFoundError, match="no labelled cases"):
        prepare_datalist(val, num_folds=2)
    cases = find_inference_cases(val)
    assert [c["case_id"] for c in cases] == ["BraTS20_Validation_003"] and len(cases[0]["image"]) == 4
    out = tmp_path / "val.json"
    main(["--dataset_dir", str(val), "--output", str(out)])
    raw = json.loads(out.read_text())
    assert set(raw) == {"testing"} and raw["testing"][0]["case_id"] == "BraTS20_Validation_003"
    assert [os.path.realpath(p) for p in find_inference_cases(out)[0]["image"]] == cases[0]["image"]


def test_brats2020_misnamed_segmentation_is_used(tmp_path):
    files = write_case(str(tmp_path), 355, shape=(16, 16, 16))  # BraTS20_Training_355 ships W39_1998.09.19_Segm.nii
    seg = tmp_path / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii"
    nib.save(nib.load(files["seg"]), seg)
    (tmp_path / "BraTS20_Training_355" / "BraTS20_Training_355_seg.nii.gz").unlink()
    assert find_brats2020_cases(tmp_path)[0]["label"] == str(seg)


@pytest.mark.parametrize("layout", ["brats2020", "brats2021", "msd"])
def test_cli_writes_training_and_testing(trees, tmp_path, layout, capsys):
    out = tmp_path / "lists" / "datalist.json"
    main(["--dataset_dir", str(trees / layout), "--output", str(out), "--num_folds", "2", "--layout", layout])
    assert f"{layout} layout" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    assert len(raw["training"]) == 2 and len(raw["testing"]) == 1
    assert sorted(c["fold"] for c in raw["training"]) == [0, 1]
    first = raw["training"][0]
    assert not str(first["label"]).startswith("/") and "labels" in first
    loaded = load_datalist(out)
    assert loaded["training"][0]["labels"] == first["labels"]
    _check_item(_preprocessing()(loaded["training"][0]))
    _check_item(_preprocessing()(find_inference_cases(out)[0]))


def test_case_ids_of_new_layouts():
    assert case_id_from_path("/d/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz") == "BraTS-GLI-00000-000"
    assert case_id_from_path("/d/BraTS-MET-00001-000-seg.nii.gz") == "BraTS-MET-00001-000"
    assert case_id_from_path("/d/imagesTs/BRATS_484.nii.gz") == "BRATS_484"
    assert case_id_from_path("/d/case_007/T1-Gd") == "case_007"  # a DICOM series folder
    assert case_id_from_path("/d/case_007/flair/") == "case_007"


def test_brats2021_missing_modality_names_the_file(tmp_path):
    _save(np.zeros((2, 2, 2)), tmp_path / "c" / "BraTS-GLI-00007-000-t1c.nii.gz", np.int16)
    _save(np.zeros((2, 2, 2)), tmp_path / "c" / "BraTS-GLI-00007-000-t1n.nii.gz", np.int16)
    with pytest.raises(FileNotFoundError, match=r"BraTS-GLI-00007-000.*-t2w\.nii\.gz"):
        find_brats2021_cases(tmp_path)


def test_inference_path_writes_predictions_in_each_layouts_own_convention(trees, tmp_path):
    """The bundle's inference path per layout: preprocessing (with cropping) -> a "prediction" (here the true
    regions) -> Invertd -> RegionsToLabeld with the item's labels -> SaveImaged named after the case.
    The written file must equal the layout's own label file: same values, shape and affine."""
    pre = Compose(
        [
            LoadImaged(["image", "label"], ensure_channel_first=True),
            Orientationd(["image", "label"], axcodes="RAS"),
            Spacingd(["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
            CropForegroundd(["image", "label"], source_key="image", allow_smaller=True),
            SelectChannelsd("image"),
            LabelToRegionsd("label", labels=(1, 2, 4), labels_key="labels"),
        ]
    )
    post = Compose(
        [
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", threshold=0.5),
            RegionsToLabeld("pred", labels=(1, 2, 4), labels_key="labels"),
            SaveImaged(
                "pred", output_dir=str(tmp_path), output_postfix="", output_dtype=np.uint8, separate_folder=False,
                resample=False, output_name_formatter=case_name_formatter, print_log=False,
            ),
        ]
    )  # fmt: skip
    items = []
    for layout in WRITERS:
        items += [c for c in find_cases(trees / layout)[1] if "label" in c][:1]
    loader = DataLoader(Dataset(items, Compose([pre, CopyItemsd("label", names="pred")])), batch_size=1, num_workers=0)
    for batch in loader:
        (item,) = decollate_batch(batch)
        assert tuple(item["image"].shape[1:]) != SHAPE  # cropped: Invertd has real work to do
        post(item)
    for item in items:
        written = nib.load(tmp_path / f"{item['case_id']}.nii.gz")
        own = nib.load(item["label"])
        assert written.shape == own.shape == SHAPE
        np.testing.assert_allclose(written.affine, own.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(own.dataobj), err_msg=item["case_id"])
