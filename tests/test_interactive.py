"""The interactive (DeepEdit-style) variant: scripts/interactive.py and configs/deepedit_*.json.

Clicks follow the preprocessing (orientation, spacing, crop) on NIfTI files with non-RAS affines, guidance
channels are zero except around clicks, the 4 intensity channels survive the simulated interaction, labels
round-trip through the class indices, and a tiny interactive training + click inference runs end to end with
``python -m monai.bundle`` as MONAI Label calls it.
"""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer
from monai.transforms import LoadImaged, SpatialCrop
from monai.utils import set_determinism

from scripts.casework import load_weights
from scripts.handlers import CheckpointError
from scripts.interactive import (
    LABEL_NAMES,
    AddGuidanceSignald,
    BratsToClassesd,
    ClassesToBratsd,
    ClicksToGuidanced,
    ClicksToWorldd,
    brats_to_classes,
    classes_to_brats,
    classes_to_regions,
    largest_error_click,
    warm_start,
)
from scripts.metrics import dice
from scripts.transforms import label_to_regions
from tests._bundle import EXAMPLE_CASE, ROOT, TINY, TINY_NETWORK
from tests._inputs import label_map

CONFIGS = ROOT / "configs"
TRAIN = ["train.json", "deepedit_train.json"]
INFER = ["inference.json", "deepedit_inference.json"]


def _parser(files, **overrides):
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(ROOT), "device": "cpu", **overrides})
    parser.parse()
    return parser


# ----------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels", [(1, 2, 4), (1, 2, 3), (2, 1, 3)])
def test_label_classes_round_trip(labels):
    lab = label_map(labels)
    classes = brats_to_classes(lab, labels)
    for name, value in zip(("necrotic_core", "edema", "enhancing_tumor"), labels):
        assert torch.equal(classes[lab == value], torch.full_like(classes[lab == value], LABEL_NAMES[name]))
    assert torch.equal(classes == 0, lab == 0)
    back = classes_to_brats(classes, labels)
    assert back.dtype == torch.uint8 and torch.equal(back, lab)
    assert torch.equal(classes_to_regions(classes), label_to_regions(lab, labels))
    onehot = torch.nn.functional.one_hot(classes[0].long(), 4).permute(3, 0, 1, 2).float()
    assert torch.equal(classes_to_regions(onehot), label_to_regions(lab, labels))  # class scores: argmax


def test_label_conversions_use_the_items_convention():
    lab = label_map((1, 2, 3))
    d = BratsToClassesd("label", labels=(1, 2, 4), labels_key="labels")({"label": lab, "labels": [1, 2, 3]})
    assert d["label_names"] == LABEL_NAMES and set(torch.unique(d["label"]).tolist()) == {0, 1, 2, 3}
    out = ClassesToBratsd("pred", labels=(1, 2, 4), labels_key="labels")({"pred": d["label"], "labels": [1, 2, 3]})
    assert out["pred"].dtype == torch.uint8 and torch.equal(torch.as_tensor(out["pred"]), lab)
    out = ClassesToBratsd("pred", labels=(1, 2, 4), labels_key="labels")({"pred": d["label"]})  # no convention: default
    assert set(torch.unique(torch.as_tensor(out["pred"])).tolist()) == {0, 1, 2, 4}
    with pytest.raises(ValueError, match=r"\[4\]"):
        brats_to_classes(label_map((1, 2, 4)), (1, 2, 3))


# ----------------------------------------------------------------------------------------------- clicks
def _write_case(folder, affine, shape=(40, 36, 30), four_d=False, click=(25, 12, 17)):
    """A 4-modality case with a non-RAS affine: a box-shaped "brain" (non-zero) inside a zero background, and a
    label map with a 3x3x3 oedema cube centred on ``click`` (to check where a click lands)."""
    rng = np.random.default_rng(0)
    brain = np.zeros(shape, bool)
    brain[6:36, 4:30, 5:27] = True
    images = [np.where(brain, rng.uniform(100, 1000, shape), 0).astype(np.float32) for _ in range(4)]
    seg = np.zeros(shape, np.uint8)
    i, j, k = click
    seg[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 2
    folder.mkdir(parents=True, exist_ok=True)
    if four_d:  # what MONAI Label hands a bundle: one channel-last 4D file
        path = folder / "case.nii.gz"
        nib.save(nib.Nifti1Image(np.stack(images, -1), affine), path)
        image = str(path)
    else:
        image = []
        for m, arr in zip(("t1", "t1ce", "t2", "flair"), images):
            nib.save(nib.Nifti1Image(arr, affine), folder / f"case_{m}.nii.gz")
            image.append(str(folder / f"case_{m}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), folder / "case_seg.nii.gz")
    return image, str(folder / "case_seg.nii.gz")


# LPS-like with an axis permutation (array axes = A-P, R-L, I-S), anisotropic voxels, and an oblique one
AFFINES = {
    "lps_permuted_aniso": np.array(
        [[0.0, -1.5, 0.0, 40.0], [-1.2, 0.0, 0.0, 30.0], [0.0, 0.0, 2.0, -20.0], [0.0, 0.0, 0.0, 1.0]]
    ),
    "lpi_08mm": np.diag([-0.8, -0.8, -0.8, 1.0])
    + np.array([[0, 0, 0, 10.0], [0, 0, 0, 5], [0, 0, 0, 2], [0, 0, 0, 0]]),
}


@pytest.mark.parametrize("four_d", [False, True], ids=["four_files", "one_4d_file"])
@pytest.mark.parametrize("affine_name", list(AFFINES))
def test_clicks_follow_orientation_spacing_and_crop(tmp_path, affine_name, four_d):
    affine = AFFINES[affine_name]
    click = (25, 12, 17)
    image, seg = _write_case(tmp_path, affine, four_d=four_d, click=click)
    parser = _parser(INFER)
    preprocessing = parser.get_parsed_content("preprocessing")
    assert isinstance(preprocessing.transforms[0], LoadImaged)
    d = preprocessing({"image": image, "label": seg, "labels": [1, 2, 4], "edema": [list(click)], "background": []})
    img, lab = d["image"], d["label"]
    assert img.shape[0] == 4 + len(LABEL_NAMES)
    # the preprocessing really reoriented, resampled and cropped
    assert nib.aff2axcodes(np.asarray(img.affine)) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(np.asarray(img.affine)[:3, :3])), 1.0)
    assert img.shape[1:] != nib.load(seg).shape
    # the click is where the affines say, and inside the (nearest-resampled) oedema cube around it
    expected = np.rint(np.linalg.inv(np.asarray(img.affine)) @ affine @ np.array([*click, 1.0]))[:3].astype(int)
    assert json.loads(d["guidance"]["edema"]) == [expected.tolist()]
    edema = img[4 + LABEL_NAMES["edema"]]
    peak = np.unravel_index(int(torch.argmax(edema)), edema.shape)
    assert list(peak) == expected.tolist()
    assert lab[0][tuple(peak)] == LABEL_NAMES["edema"]
    cube = np.argwhere(np.asarray(lab[0]) == LABEL_NAMES["edema"])
    assert np.abs(cube.mean(0) - expected).max() <= 1.0
    # guidance: zero for labels without clicks, non-zero only near the click
    for name in ("background", "necrotic_core", "enhancing_tumor"):
        assert not img[4 + LABEL_NAMES[name]].any()
    near = np.argwhere(np.asarray(edema) > 0)
    assert np.abs(near - expected).max() <= 4 * parser.get_parsed_content("guidance_sigma") + 1
    assert float(edema.max()) == pytest.approx(1.0)


def test_no_clicks_means_zero_guidance_and_intensities_unchanged(tmp_path):
    image, _ = _write_case(tmp_path, AFFINES["lpi_08mm"])
    parser = _parser(INFER)
    d = parser.get_parsed_content("preprocessing")({"image": image})
    base = parser.get_parsed_content("preprocessing_transforms")
    ref = {"image": image}
    for t in base:
        ref = t(ref)
    assert torch.equal(d["image"][:4], ref["image"]) and not d["image"][4:].any()
    assert all(json.loads(v) == [] for v in d["guidance"].values())


def test_clicks_outside_the_crop_are_dropped_and_bad_clicks_rejected(tmp_path, caplog):
    image, _ = _write_case(tmp_path, AFFINES["lpi_08mm"])
    loaded = LoadImaged("image", ensure_channel_first=True)({"image": image})
    d = ClicksToWorldd()(dict(loaded, background=json.dumps([[0, 0, 0]]), edema=np.array([20, 15, 14])))
    assert d["clicks_world"]["edema"] and d["clicks_world"]["necrotic_core"] == []
    cropped = dict(d, image=SpatialCrop(roi_start=(5, 5, 5), roi_end=(30, 30, 25))(d["image"]))  # updates the affine
    out = ClicksToGuidanced()(cropped)
    assert out["guidance"]["background"] == [] and out["guidance"]["edema"] == [[15, 10, 9]]
    assert "clicks_world" not in out and "outside the preprocessed image" in caplog.text
    with pytest.raises(ValueError, match="edema"):
        ClicksToWorldd()(dict(loaded, edema=[[1, 2]]))


def test_click_on_real_lps_case_lands_in_the_clicked_structure():
    """TCGA-DU-7294 (LPS affine, 240x240x155): a click in the middle of the largest oedema slab lands on
    oedema after reorientation to RAS and the crop to the brain."""
    seg_path = EXAMPLE_CASE / "TCGA-DU-7294_seg.nii.gz"
    seg = np.asarray(nib.load(seg_path).dataobj)
    assert nib.aff2axcodes(nib.load(seg_path).affine) != ("R", "A", "S")
    values = sorted(int(v) for v in np.unique(seg) if v)
    labels = (1, 2, 4) if 4 in values else (1, 2, 3)
    from scipy import ndimage as ndi

    distance = ndi.distance_transform_edt(seg == 2)
    click = [int(v) for v in np.unravel_index(int(np.argmax(distance)), seg.shape)]
    image = [str(EXAMPLE_CASE / f"TCGA-DU-7294_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    d = _parser(INFER).get_parsed_content("preprocessing")(
        {"image": image, "label": str(seg_path), "labels": list(labels), "edema": [click]}
    )
    (point,) = json.loads(d["guidance"]["edema"])
    assert nib.aff2axcodes(np.asarray(d["image"].affine)) == ("R", "A", "S")
    assert d["label"][0][tuple(point)] == LABEL_NAMES["edema"]
    assert int(torch.argmax(d["image"][4 + LABEL_NAMES["edema"]])) == np.ravel_multi_index(point, d["image"].shape[1:])


# ----------------------------------------------------------------------------------------------- interaction
def _interaction_batch():
    """Two items (what RandCropByPosNegLabeld's 2 samples give): 4 intensity channels + 4 guidance channels."""
    items = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        label = torch.zeros(1, 16, 16, 16)
        label[0, 3:13, 3:13, 3:13] = 2
        label[0, 6:10, 6:10, 6:10] = 3
        label[0, 7:9, 7:9, 7:9] = 1
        image = torch.rand(4, 16, 16, 16, generator=g) + 0.5
        item = {
            "image": image,
            "label": label,
            "label_names": dict(LABEL_NAMES),
            "guidance": {k: json.dumps([[8, 8, 8]] if k == "edema" else []) for k in LABEL_NAMES},
        }
        items.append(AddGuidanceSignald(sigma=2, label_names=LABEL_NAMES)(item))
    return items


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_interaction_never_zeroes_intensity_channels(probability):
    set_determinism(0)
    parser = _parser(TRAIN, **{"network_def#channels": [8, 16, 32, 64]})
    network = parser.get_parsed_content("network_def")
    interaction = parser.get_parsed_content("train#interaction", instantiate=True)
    interaction.deepgrow_probability = probability
    interaction.max_interactions = 2
    items = _interaction_batch()
    seen = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        network=network,
        train_data_loader=DataLoader(Dataset(items), batch_size=2),
        loss_function=parser.get_parsed_content("loss"),
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        inferer=SimpleInferer(),
        iteration_update=interaction,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.batch["image"].clone()))
    trainer.run()
    (image,) = seen
    original = torch.stack([i["image"] for i in items])
    assert image.shape == original.shape == (2, 8, 16, 16, 16)
    assert torch.allclose(image[:, :4], original[:, :4])  # every item's 4 intensity channels kept
    if probability == 0.0:
        assert not image[:, 4:].any()  # automatic mode: all guidance zeroed, in every batch item
    else:
        assert image[:, 4 + LABEL_NAMES["edema"]].amax() == pytest.approx(1.0)  # the clicks are kept ...
        assert image[:, 4:].amax(dim=(2, 3, 4)).count_nonzero() >= 2  # ... and corrective ones added


def test_interactive_training_starts_from_the_automatic_model():
    """deepedit_train.json's network starts from models/model.pt: the guidance inputs at 0 and the region head
    turned into a class head, so without clicks it labels as the thresholded regions of the automatic model."""
    interactive = _parser(TRAIN).get_parsed_content("network").eval()
    automatic = _parser(["train.json"]).get_parsed_content("network")
    load_weights(automatic, ROOT / "models" / "model.pt", "cpu")
    assert interactive.encoder[0].conv1.weight[:, 4:].abs().sum() == 0
    torch.manual_seed(0)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        tc, wt, et = automatic(x)[0] > 0
        classes = interactive(torch.cat([x, torch.zeros_like(x)], 1))[0].argmax(0)
    expected = torch.zeros_like(classes)
    expected[wt] = LABEL_NAMES["edema"]
    expected[wt & tc] = LABEL_NAMES["necrotic_core"]
    expected[wt & tc & et] = LABEL_NAMES["enhancing_tumor"]
    assert (classes == expected).float().mean() > 0.95  # exact wherever the regions nest


def test_shipped_interactive_model_follows_clicks_on_the_bundled_real_case():
    """models/deepedit/model.pt on TCGA-DU-7294: one round of clicks (one per label the prediction gets wrong, in
    its largest missed piece) changes the segmentation around each click and raises the oedema, TC and WT Dice
    (docs/interactive.md: the click curve)."""
    from monai.transforms import Compose

    parser = _parser(TRAIN)
    network = load_weights(parser.get_parsed_content("network_def"), ROOT / "models/deepedit/model.pt", "cpu")
    inferer = parser.get_parsed_content("sw_inferer")
    files = [str(EXAMPLE_CASE / f"TCGA-DU-7294_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    d = Compose(parser.get_parsed_content("interactive_preprocessing_transforms"))(
        {"image": files, "label": str(EXAMPLE_CASE / "TCGA-DU-7294_seg.nii.gz")}
    )
    ref = np.asarray(d["label"][0]).round().astype(int)
    signal = AddGuidanceSignald(sigma=parser.get_parsed_content("guidance_sigma"), label_names=LABEL_NAMES)

    def predict(clicks):
        x = signal({"image": d["image"], "guidance": {k: clicks.get(k, []) for k in LABEL_NAMES}})["image"]
        with torch.no_grad():
            return inferer(torch.as_tensor(x)[None].float(), network)[0].argmax(0).numpy()

    def scores(pred):
        nc, ed, et = (LABEL_NAMES[k] for k in ("necrotic_core", "edema", "enhancing_tumor"))
        tc = (nc, et)
        return (dice(pred == ed, ref == ed), dice(np.isin(pred, tc), np.isin(ref, tc)), dice(pred > 0, ref > 0))

    before = predict({})
    clicks = [largest_error_click(before, ref, LABEL_NAMES, only=name) for name in LABEL_NAMES]
    clicks = {c[0]: [c[1]] for c in clicks if c is not None}
    assert "edema" in clicks  # the automatic result misses most of this case's oedema
    after = predict(clicks)
    for (point,) in clicks.values():
        around = tuple(slice(max(0, v - 5), v + 6) for v in point)
        assert (before[around] != after[around]).any(), point
    assert all(a > b for a, b in zip(scores(after), scores(before))), (scores(before), scores(after))


def test_warm_start_names_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="warm_start_ckpt"):
        warm_start(torch.nn.Linear(1, 1), tmp_path / "model.pt")


def test_largest_error_click_picks_the_interior_of_the_largest_miss():
    label = np.zeros((20, 20, 20), int)
    label[2:12, 2:12, 2:12] = 2
    label[15:18, 15:18, 15:18] = 3
    pred = np.zeros_like(label)
    name, point = largest_error_click(pred, label)
    assert name == "edema" and all(6 <= v <= 7 for v in point)
    assert largest_error_click(label, label) is None
    name, _ = largest_error_click(label, np.zeros_like(label))  # over-segmentation: a background click
    assert name == "background"


def test_inference_config_keeps_the_monai_label_contract():
    parser = _parser(INFER)
    pre = parser.get_parsed_content("preprocessing").transforms
    post = parser.get_parsed_content("postprocessing").transforms
    assert isinstance(pre[0], LoadImaged) and pre[0].keys[0] == "image"
    assert [type(t).__name__ for t in post] == [
        "Activationsd",
        "MaskOutsideBraind",
        "Invertd",
        "AsDiscreted",
        "Identityd",  # the automatic model's KeepMainTumourd works on region channels, not on these classes
        "ClassesToBratsd",
        "CaseIdToMetad",
        "SaveImaged",
    ]
    assert parser.get_parsed_content("label_names") == LABEL_NAMES
    net = parser.get_parsed_content("network_def")
    assert net(torch.rand(1, 8, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    assert parser.get_parsed_content("ckpt_path").endswith("models/deepedit/model.pt")
    train = _parser(TRAIN)
    for key in (
        "bundle_root",
        "device",
        "train#dataset#data",
        "validate#dataset#data",
        "train#trainer#max_epochs",
        "train#handlers",
        "val_interval",
        "ckpt_path",
        "run",
    ):
        assert key in train, key
    assert isinstance(train["train#handlers"], list)


# ----------------------------------------------------------------------------------------------- end to end
def _bundle(*args, config):
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *args,
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str([str(CONFIGS / c) for c in config]),
    ]


def _run(cmd):
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_interactive_training_and_click_inference_end_to_end(tmp_path):
    from scripts.synthetic.phantom import write_dataset

    write_dataset(tmp_path / "data", num_cases=4, seed=3, shape=(48, 56, 40), progress=False)
    # TINY widths do not fit the shipped automatic model, so no warm start
    common = ["--bundle_root", str(tmp_path), *TINY, "--num_folds", "2", "--warm_start_ckpt", "none"]
    # MONAI Label's BundleTrainTask calls the run id "run" without "initialize"
    log = _run(
        _bundle(
            "run",
            *common,
            "--dataset_dir",
            str(tmp_path / "data"),
            "--epochs",
            "2",
            "--val_interval",
            "2",
            "--ckpt_path",  # where MONAI Label's train task puts it; the default is runs/deepedit/model.pt
            str(tmp_path / "models" / "deepedit" / "model.pt"),
            config=TRAIN,
        )
    )
    assert "val_mean_dice" in log and "Saved best model" in log
    model = torch.load(tmp_path / "models" / "deepedit" / "model.pt", map_location="cpu", weights_only=True)
    assert model["encoder.0.conv1.weight"].shape[1] == 8 and model["head.bias"].shape == (4,)  # 4 + 4 in, 4 classes out
    assert not (tmp_path / "models" / "model.pt").exists()

    cases = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    files = lambda c: [str(c / f"{c.name}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]  # noqa: E731
    seg = np.asarray(nib.load(cases[0] / f"{cases[0].name}_seg.nii.gz").dataobj)
    edema = np.argwhere(seg == 2)[len(np.argwhere(seg == 2)) // 2].tolist()
    core = np.argwhere(seg == 1)[0].tolist()
    # case 2 as one channel-last 4D file, as MONAI Label hands it over, in BraTS 2023 label values
    four_d = tmp_path / "case4d.nii.gz"
    ref = nib.load(files(cases[1])[0])
    nib.save(
        nib.Nifti1Image(np.stack([np.asarray(nib.load(f).dataobj) for f in files(cases[1])], -1), ref.affine), four_d
    )
    datalist = {
        "testing": [
            {
                "image": files(cases[0]),
                "edema": [edema],
                "necrotic_core": [core],
                "background": [[1, 1, 1]],
                "enhancing_tumor": [],
            },
            {"image": files(cases[1])},
            {"image": str(four_d), "labels": [1, 2, 3], "edema": [edema, core]},
        ]
    }
    (tmp_path / "clicks.json").write_text(json.dumps(datalist))
    out = tmp_path / "pred"
    infer = ["--bundle_root", str(tmp_path), *TINY_NETWORK, "--dataset_dir", str(tmp_path / "clicks.json")]
    _run(_bundle(*infer, "--output_dir", str(out), config=INFER))
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{cases[0].name}.nii.gz", f"{cases[1].name}.nii.gz", "case4d.nii.gz"]), written
    for name, source, allowed in [
        (f"{cases[0].name}.nii.gz", files(cases[0])[0], {0, 1, 2, 4}),
        (f"{cases[1].name}.nii.gz", files(cases[1])[0], {0, 1, 2, 4}),
        ("case4d.nii.gz", files(cases[1])[0], {0, 1, 2, 3}),
    ]:
        pred, ref = nib.load(out / name), nib.load(source)
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= allowed
