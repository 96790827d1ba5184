import json

import nibabel as nib
import numpy as np
import pytest

from scripts.conventions import MODALITIES, case_id_from_path
from scripts.data.layouts import (
    assign_folds,
    find_brats2020_cases,
    find_inference_cases,
    load_datalist,
    main,
    split_fold,
)


def _write_case(root, case_id, with_label=True, skip=()):
    folder = root / case_id
    folder.mkdir(parents=True)
    vol = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for m in MODALITIES + (("seg",) if with_label else ()):
        if m not in skip:
            nib.save(vol, folder / f"{case_id}_{m}.nii.gz")
    return folder


def test_case_id_from_path():
    assert case_id_from_path("/d/BraTS20_Training_001/BraTS20_Training_001_t1ce.nii.gz") == "BraTS20_Training_001"
    assert case_id_from_path("x/TCGA-DU-7294_flair.nii") == "TCGA-DU-7294"
    assert case_id_from_path("BRATS_001.nii.gz") == "BRATS_001"


def test_find_cases_channel_order_and_labels(tmp_path):
    for i in (2, 1, 3):
        _write_case(tmp_path / "MICCAI_BraTS2020_TrainingData", f"BraTS20_Training_{i:03d}", with_label=i != 3)
    cases = find_brats2020_cases(tmp_path)
    assert [c["case_id"] for c in cases] == [f"BraTS20_Training_{i:03d}" for i in (1, 2, 3)]
    assert [p.rsplit("_", 1)[1] for p in cases[0]["image"]] == [f"{m}.nii.gz" for m in MODALITIES]
    assert "label" in cases[0] and "label" not in cases[2]


def test_missing_modality_names_case_and_file(tmp_path):
    _write_case(tmp_path, "BraTS20_Training_007", skip=("flair",))
    with pytest.raises(FileNotFoundError, match=r"BraTS20_Training_007.*_flair\.nii\.gz"):
        find_brats2020_cases(tmp_path)


def test_folds_are_seeded_balanced_and_disjoint():
    cases = [{"case_id": f"c{i}"} for i in range(23)]
    a, b = assign_folds(cases, 5, seed=1), assign_folds(cases, 5, seed=1)
    assert a == b and assign_folds(cases, 5, seed=2) != a
    sizes = [sum(c["fold"] == f for c in a) for f in range(5)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23
    train, val = split_fold({"training": a}, 2)
    assert {c["case_id"] for c in train}.isdisjoint({c["case_id"] for c in val})
    assert len(train) + len(val) == 23
    with pytest.raises(ValueError, match="fold 7"):
        split_fold({"training": a}, 7)


def test_datalist_cli_writes_relative_paths(tmp_path):
    for i in range(1, 6):
        _write_case(tmp_path / "data", f"BraTS20_Training_{i:03d}")
    out = tmp_path / "lists" / "datalist.json"
    main(["--dataset_dir", str(tmp_path / "data"), "--output", str(out), "--num_folds", "5"])
    raw = json.loads(out.read_text())
    assert len(raw["training"]) == 5 and sorted(c["fold"] for c in raw["training"]) == [0, 1, 2, 3, 4]
    assert raw["training"][0]["label"].startswith("../data/")
    loaded = load_datalist(out)
    assert all(p.endswith(".nii.gz") and (out.parent / p).exists() for p in loaded["training"][0]["image"])


def test_inference_cases_from_folder_file_and_datalist(tmp_path):
    _write_case(tmp_path / "cases", "TCGA-XX-0001")
    cases = find_inference_cases(tmp_path / "cases")
    assert cases[0]["case_id"] == "TCGA-XX-0001" and "label" not in cases[0] and len(cases[0]["image"]) == 4
    four_d = tmp_path / "4d"
    four_d.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 4), np.float32), np.eye(4)), four_d / "study.nii.gz")
    assert find_inference_cases(four_d) == [{"case_id": "study", "image": str(four_d / "study.nii.gz")}]
    assert find_inference_cases(four_d / "study.nii.gz")[0]["case_id"] == "study"
    dl = tmp_path / "list.json"
    dl.write_text(json.dumps({"testing": [{"image": "4d/study.nii.gz"}]}))
    assert find_inference_cases(dl)[0]["image"] == str(tmp_path / "4d" / "study.nii.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inference_cases(tmp_path / "nowhere")


def test_load_datalist_resolves_only_image_and_label(tmp_path):
    """Why not monai.data.load_decathlon_datalist: it also turns a case id into a path when a folder of that name
    sits next to the JSON."""
    from monai.data import load_decathlon_datalist

    (tmp_path / "case_001").mkdir()
    item = {"case_id": "case_001", "image": "case_001/img.nii.gz", "label": "case_001/seg.nii.gz", "fold": 0}
    (tmp_path / "list.json").write_text(json.dumps({"training": [item]}))
    ours = load_datalist(tmp_path / "list.json")["training"][0]
    assert ours["case_id"] == "case_001" and ours["image"] == str(tmp_path / "case_001" / "img.nii.gz")
    monai_item = load_decathlon_datalist(tmp_path / "list.json")[0]
    assert monai_item["case_id"] == str(tmp_path / "case_001")
