"""Clinical validation tools on real files: Grad-CAM (with the model-randomisation sanity test), TTA
uncertainty, the degradations, and the ``report`` and ``robustness`` bundle workflows run as users run them
(``python -m monai.bundle run`` in subprocesses, a tiny network trained for the purpose, synthetic cases plus
the bundled real case examples/TCGA-DU-7294), the HTML report opened in headless Chromium."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from benchmarks.review_flag import best_cut, calibrate, leave_one_out
from scripts.conventions import CLASS_COLOURS, MODALITIES
from scripts.degradations import DEGRADATIONS, degrade
from scripts.explain import RegionGradCAM, RegionScore, randomisation_check
from scripts.figures import LABEL_COLOURS, MARK_COLOUR, canonical, display_slice
from scripts.inferers import FlipTTAInferer
from scripts.io import write_json
from scripts.report import find_chromium, lesion_rows, side_of, tta_in_words, window_in_words, write_pdf
from scripts.synthetic.phantom import write_dataset
from scripts.uncertainty import (
    REVIEW_SCORES,
    TTAResult,
    binary_entropy,
    flag_text,
    load_calibration,
    review_scores,
    tta_uncertainty,
)
from tests._bundle import EXAMPLE_CASE, ROOT, TINY, UPENN_CASE

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel i grows towards the patient's left, j posterior (BraTS files)
CHANNELS = [8, 16, 32, 64]


def bundle(run_id, *args, configs=("inference.json",)):
    files = str([str(ROOT / "configs" / c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--meta_file", str(ROOT / "configs" / "metadata.json")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return subprocess.run([*cmd, "--config_file", files, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ResUNet trained for two epochs by the bundle on small synthetic cases."""
    root = tmp_path_factory.mktemp("clinical")
    write_dataset(root / "data", num_cases=6, seed=3, shape=(48, 56, 40), progress=False)
    proc = bundle("training", "--bundle_root", str(root), "--dataset_dir", str(root / "data"), *TINY,
                  "--ckpt_dir", str(root / "models"),  # where the report and robustness runs look by default
                  "--epochs", "2", "--val_interval", "2", configs=("train.json",))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copy(ROOT / "models" / "imputer.pt", root / "models")  # as in the bundle: missing sequences are imputed
    return root


def _network(root) -> torch.nn.Module:
    """The inference config's network with the tiny widths, and the trained weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["network_def#channels"] = CHANNELS
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    return net.eval()


def _case_tensor(case_dir) -> torch.Tensor:
    name = case_dir.name
    img = np.stack([np.asanyarray(nib.load(case_dir / f"{name}_{m}.nii.gz").dataobj) for m in MODALITIES])
    img = (img / np.percentile(img[img > 0], 99.5)).astype(np.float32)
    return torch.from_numpy(img)[None]


# ----------------------------------------------------------------------------------------------- Grad-CAM
def test_region_score_sums_logits_inside_the_region_or_everywhere_when_empty():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 3, 2, 4)
    scorer = RegionScore(lambda x: logits)
    masks = torch.zeros(1, 3, 2, 4, dtype=torch.bool)
    masks[0, 0, 0, :2] = True  # region 0: two voxels; regions 1 and 2 empty -> whole image
    scorer.masks = masks
    scores = scorer(torch.zeros(1))
    assert scores.tolist() == [[0.0 + 1.0, float(logits[0, 1].sum()), float(logits[0, 2].sum())]]


def test_gradcam_maps_and_randomisation_sanity(trained):
    net = _network(trained)
    x = _case_tensor(trained / "data" / "BraTS20_Training_001")
    maps = RegionGradCAM(net)(x)
    assert maps.shape == (3, *x.shape[2:])
    assert float(maps.min()) >= 0.0 and float(maps.max()) == pytest.approx(1.0)
    varying = [r for r in range(3) if float(maps[r].std()) > 0]  # all zero: no positive evidence for the region
    assert varying, "every map is constant"
    assert all(float(maps[r].max()) == 0.0 for r in range(3) if r not in varying)
    # Adebayo et al.: the same network gives the same maps, re-initialised weights give different ones
    again = RegionGradCAM(net)(x)
    assert torch.allclose(maps, again, atol=1e-5)
    correlations = randomisation_check(net, x)
    assert set(correlations) == {"TC", "WT", "ET"}
    defined = [
        correlations[("TC", "WT", "ET")[r]] for r in varying if not np.isnan(correlations[("TC", "WT", "ET")[r]])
    ]
    # every region's map changes with the weights, and at least one clearly (a barely trained tiny network's ET
    # evidence still resembles its initial features)
    assert defined and all(c < 0.95 for c in defined) and min(defined) < 0.5, correlations


def test_gradcam_with_recomputed_decoder_blocks_gives_the_same_maps():
    """Recomputing the decoder blocks in the backward pass (less memory) changes nothing in the maps."""
    from scripts.networks import ResUNet

    torch.manual_seed(0)
    net = ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=CHANNELS, strides=[1, 2, 2, 2]).eval()
    x = torch.rand(1, 4, 24, 32, 16, generator=torch.Generator().manual_seed(1))
    cam = RegionGradCAM(net)
    assert sum(type(m).__name__ == "Recomputed" for m in cam.scorer.network.modules()) == len(net.decoder)
    torch.testing.assert_close(cam(x), RegionGradCAM(net, recompute=False)(x))
    assert not any(type(m).__name__ == "Recomputed" for m in net.modules())  # the caller's network is untouched


def test_gradcam_in_the_tumour_box_is_zero_outside_it_and_whole_when_the_box_is():
    """With masks, the maps are computed in the box around the tumour plus the margin (memory bounded by the
    tumour); a box that spans the image gives the whole-image maps."""
    from scripts.explain import tumour_box
    from scripts.networks import ResUNet

    torch.manual_seed(0)
    net = ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=CHANNELS, strides=[1, 2, 2, 2]).eval()
    x = torch.rand(1, 4, 40, 40, 32, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(1, 3, 40, 40, 32, dtype=torch.bool)
    masks[0, :, 4:10, 5:12, 3:9] = True
    assert tumour_box(masks, 2) == (slice(2, 12), slice(3, 14), slice(1, 11))
    assert tumour_box(torch.zeros_like(masks), 2) is None
    maps = RegionGradCAM(net, margin=2)(x, masks)
    assert maps.shape == (3, 40, 40, 32) and float(maps.max()) > 0
    inside = torch.zeros(40, 40, 32, dtype=torch.bool)
    inside[2:12, 3:14, 1:11] = True
    assert float(maps[:, ~inside].abs().max()) == 0.0
    torch.testing.assert_close(RegionGradCAM(net, margin=40)(x, masks), RegionGradCAM(net, margin=None)(x, masks))


def _batchnorm_resunet():
    """A ResUNet with batch norm (as inference.json builds it) and non-trivial running statistics, in eval mode."""
    from scripts.networks import ResUNet

    torch.manual_seed(0)
    net = ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=CHANNELS, strides=[1, 2, 2, 2], norm="batch")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_gradcam_in_slabs_gives_the_whole_image_maps():
    """The full-resolution decoder stage run in slabs with a halo (memory of one slab) gives monai's GradCAM maps
    on the whole input, with and without masks (one region empty: scored over the whole image), and at another
    encoder layer; a network with instance norm (statistics over the whole image) is not sliced."""
    import copy

    from monai.data import MetaTensor

    from scripts.explain import slab_halo, slab_target, slabs
    from scripts.networks import ResUNet, place

    net = _batchnorm_resunet()
    x = torch.rand(1, 4, 40, 24, 32, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(1, 3, 40, 24, 32, dtype=torch.bool)
    masks[0, :2, 5:30, 4:20, 6:25] = True
    masks[0, 1, 30:36, 2:9, 1:8] = True
    assert slab_target(net, "encoder.3") == 3 and slab_halo(net) == 2
    assert len(slabs(40, 24 * 32 * 6 // (24 * 32) - 4, 2)) == 20  # the slabs the first call below uses
    for layer, mask in (("encoder.3", masks), ("encoder.3", None), ("encoder.2", masks)):
        sliced = RegionGradCAM(net, layer, margin=None, slab_voxels=24 * 32 * 6)
        assert sliced.level == int(layer[-1])
        whole = RegionGradCAM(net, layer, margin=None, slab_voxels=None)
        assert whole.level is None
        expected = whole(x, mask)
        assert float(expected.max()) > 0  # some region has positive evidence (an all-zero map must stay zero)
        torch.testing.assert_close(sliced(x, mask), expected, atol=1e-5, rtol=1e-4)
    # in the tumour box, as the report calls it
    torch.testing.assert_close(RegionGradCAM(net, slab_voxels=3000)(x, masks),
                               RegionGradCAM(net, slab_voxels=None)(x, masks), atol=1e-5, rtol=1e-4)  # fmt: skip
    # as the report runs it: the network placed channels-last (slabs across the axis outermost in memory), the
    # preprocessed image a MetaTensor
    placed = place(copy.deepcopy(net), "cpu")
    assert placed.head.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(RegionGradCAM(placed, slab_voxels=3000)(MetaTensor(x), MetaTensor(masks)),
                               RegionGradCAM(net, slab_voxels=None)(x, masks), atol=1e-5, rtol=1e-4)  # fmt: skip
    instance = ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=CHANNELS, strides=[1, 2, 2, 2]).eval()
    assert slab_target(instance, "encoder.3") is None and RegionGradCAM(instance).level is None
    assert slab_target(net, "encoder.0") is None and slab_target(net, "decoder.0") is None
    assert slabs(10, 4, 2) == [(0, 4), (4, 8), (8, 10)] and slabs(10, 3, 2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


# ----------------------------------------------------------------------------------------------- uncertainty
def test_tta_uncertainty_agrees_for_a_flip_equivariant_network_and_not_otherwise():
    x = torch.rand(1, 4, 8, 10, 6, generator=torch.Generator().manual_seed(0))
    tta = FlipTTAInferer(SimpleInferer(), spatial_axes=(0, 1, 2))
    voxelwise = tta_uncertainty(x, lambda t: 4 * (t[:, :3] - 0.5), tta)  # commutes with flips
    assert voxelwise.passes == 8 and voxelwise.case_score() == 0.0
    torch.testing.assert_close(voxelwise.logits, 4 * (x[:, :3] - 0.5))
    torch.testing.assert_close(voxelwise.entropy, binary_entropy(torch.sigmoid(4 * (x[:, :3] - 0.5))))

    def shifted(t):  # looks one voxel to the side: flipping changes which side
        return 4 * (torch.roll(t[:, :3], 1, dims=2) - 0.5)

    result = tta_uncertainty(x, shifted, tta)
    masks = [torch.flip(shifted(torch.flip(x, [2])), [2]) > 0, shifted(x) > 0]
    union, agree = masks[0] | masks[1], masks[0] & masks[1]
    assert 0.0 < result.case_score() <= 1.0
    assert result.region_scores["TC"] >= 1 - int(agree[0, 0].sum()) / int(union[0, 0].sum()) - 1e-9
    assert float(result.entropy.max()) <= 1.0 and float(result.entropy.min()) >= 0.0


# ------------------------------------------------------------------------------------------ report page parts
def test_one_colour_scheme_and_radiological_display():
    """Label colours are CLASS_COLOURS; the patient's right (RAS +x) is shown on the image's left, anterior at the
    top of axial slices and on the left of sagittal ones, superior at the top of coronal ones, also for a file
    stored LPS (reoriented without resampling)."""
    assert [tuple(round(v * 255) for v in LABEL_COLOURS(k)[:3]) for k in (1, 2, 3)] == list(CLASS_COLOURS)
    ras = np.zeros((20, 30, 10), np.float32)
    ras[15:19, 12:14, 4:6] = 1  # patient's right (high x), middle front-back
    ras[8:10, 25:29, 4:6] = 2  # anterior (high y)
    ras[8:10, 12:14, 8:10] = 3  # superior (high z)
    lps = ras[::-1, ::-1]  # the same head stored with x towards the left, y posterior
    lps_affine = LPS.copy()
    lps_affine[:3, 3] = [19, 29, 0]  # voxel (0, 0, 0) is at RAS x = 19, y = 29
    volume, spacing = canonical(lps, lps_affine)
    assert spacing == (1.0, 1.0, 1.0) and np.array_equal(volume, ras)
    axial = display_slice(volume, "axial", (9, 13, 4))
    rows, cols = np.nonzero(axial == 1)
    assert cols.max() < axial.shape[1] / 2  # right on the image's left
    rows, cols = np.nonzero(axial == 2)
    assert rows.max() < axial.shape[0] / 2  # anterior at the top
    sagittal = display_slice(volume, "sagittal", (9, 13, 4))
    rows, cols = np.nonzero(sagittal == 2)
    assert cols.max() < sagittal.shape[1] / 2  # anterior on the left
    coronal = display_slice(volume, "coronal", (9, 13, 8))
    rows, cols = np.nonzero(coronal == 3)
    assert rows.max() < coronal.shape[0] / 2  # superior at the top


def test_lesion_table_sides_volumes_and_centroids():
    classes = np.zeros((40, 20, 10), np.uint8)
    classes[30:34, 5:9, 2:6] = 2  # 64 voxels of oedema at high RAS x: the patient's right
    classes[31:33, 6:8, 3:5] = 3  # 8 of them enhancing
    classes[4:6, 5:7, 2:4] = 1  # 8 voxels of necrotic core on the left
    classes[19:21, 10:12, 5:6] = 2  # 4 voxels across the midline (x 19.5)
    classes[0, 0, 0] = 2  # one voxel: a smaller piece
    affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along x: a voxel is 2 uL
    rows = lesion_rows(classes, affine, midline=19.5, min_ml=0.01)
    assert [r[0] for r in rows] == ["1", "2", "2 smaller pieces (< 0.01 mL)"]
    first = rows[0]
    assert first[1:5] == ("0.00", f"{56 * 0.002:.2f}", f"{8 * 0.002:.2f}", f"{64 * 0.002:.2f}")
    assert first[5] == "63, 6, 4" and first[6] == "right"  # centroid x = 2 mm x 31.5
    assert rows[1][6] == "left" and rows[1][1] == f"{8 * 0.002:.2f}"
    assert side_of(np.array([19, 20]), 19.5) == "both (R 50%, L 50%)"
    # the same head stored LPS gives the same sides and centroids
    lps = LPS @ affine
    lps[:3, 3] = [2.0 * 39, 19, 0]
    assert lesion_rows(classes[::-1, ::-1], lps, midline=19.5, min_ml=0.01) == rows


def test_window_and_tta_in_plain_words():
    assert window_in_words([-1, -1, -1], 0.25) == "one window over the whole brain (no tiling)"
    assert window_in_words([96, 96, -1], 0.5) == "sliding windows of 96 x 96 x whole-brain voxels, overlapping by 50%"
    assert tta_in_words([]) == "off (1 pass)"
    assert tta_in_words([0, 2]) == "on: 4 passes, mirrored left-right, up-down"


def test_review_flag_calibration_chooses_the_separating_cut(tmp_path):
    rows = [{"case": str(i), "kind": "synthetic", "dice_WT": d} | {k: s for k in REVIEW_SCORES}
            for i, (d, s) in enumerate([(0.9, 0.1), (0.8, 0.2), (0.5, 0.6), (0.3, 0.8)])]  # fmt: skip
    rows[0]["entropy_WT"] = 0.7  # this score misses a good case
    assert best_cut([0.1, 0.2, 0.6, 0.8], [False, False, True, True]) == (
        pytest.approx(0.4),
        1.0,
        1.0,
        pytest.approx(0.4),
    )
    cal = calibrate(rows, 0.7)
    assert cal["score"] != "entropy_WT" and cal["threshold"] == pytest.approx(0.4)
    assert (cal["sensitivity"], cal["specificity"], cal["cases"], cal["bad"]) == (1.0, 1.0, 4, 2)
    real = [{"case": "r", "kind": "real", "dice_WT": 0.6} | {k: 0.5 for k in REVIEW_SCORES}]
    assert leave_one_out(rows + real, 0.7, "disagreement")[0] | {} == {
        "case": "r", "score": 0.5, "threshold": pytest.approx(0.4), "dice_WT": 0.6, "flagged": True, "bad": True,
        "correct": True}  # fmt: skip
    # the report reads the file; other weights or other TTA flips leave the flag uncalibrated
    path = tmp_path / "review_flag.json"
    write_json({k: v for k, v in cal.items() if k != "all_scores"} | {"weights_md5": "abc", "tta_axes": [0]}, path)
    loaded = load_calibration(path, None, "abc", (0,))
    assert (loaded.score, loaded.threshold) == (cal["score"], pytest.approx(0.4))
    scores = {k: 0.5 for k in REVIEW_SCORES}
    assert loaded.flags(scores) and "sensitivity 1.00, specificity 1.00" in flag_text(loaded, scores)
    assert "4 held-out synthetic cases (2 with WT Dice < 0.7)" in flag_text(loaded, scores)
    for other in (load_calibration(path, None, "other", (0,)), load_calibration(path, None, "abc", (0, 1))):
        assert not other.measured and "not calibrated" in flag_text(other, scores)
    user = load_calibration(path, 0.9, "abc", (0,))
    assert not user.flags(scores) and "not calibrated" in flag_text(user, scores)


def test_review_scores_of_a_fragmented_uncertain_prediction():
    logits = torch.full((1, 3, 20, 20, 20), -5.0)
    logits[0, 1, 2:8, 2:8, 2:8] = 5.0  # WT: a 216-voxel piece and an 8-voxel piece
    logits[0, 1, 15:17, 15:17, 15:17] = 5.0
    entropy = torch.zeros_like(logits)
    entropy[0, 1, 2:5, 2:8, 2:8] = 0.8  # half of the big piece is uncertain
    result = TTAResult(logits, entropy, {"TC": 0.0, "WT": 0.25, "ET": 0.5}, 2)
    scores = review_scores(result)
    assert scores["disagreement"] == 0.5 and scores["disagreement_WT"] == 0.25
    assert scores["fragmentation_WT"] == pytest.approx(8 / 224)
    assert scores["uncertain_volume_WT"] == pytest.approx(108 / 224)
    assert scores["entropy_WT"] == pytest.approx(0.8 * 108 / 224)
    empty = review_scores(TTAResult(torch.full_like(logits, -5.0), entropy, {"TC": 0.0, "WT": 0.0, "ET": 0.0}, 2))
    assert empty["entropy_WT"] == empty["fragmentation_WT"] == 1.0


def test_pdf_is_printed_by_headless_chromium_or_skipped(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed: the report writes no PDF (one log line says so)")
    page = tmp_path / "page.html"
    page.write_text("<html><body><h1>Case X</h1><p>volumes</p></body></html>")
    pdf = write_pdf(page, tmp_path / "report.pdf", chromium)
    assert open(pdf, "rb").read(5) == b"%PDF-" and sorted(p.name for p in tmp_path.iterdir()) == [
        "page.html",
        "report.pdf",
    ]


# ----------------------------------------------------------------------------------------------- degradations
@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_degradations_are_seeded_keep_the_background_and_grow_with_severity(name):
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(4, 32, 36, 28, generator=gen) * 100 + 10
    img[:, :3] = 0  # background
    severities, _ = DEGRADATIONS[name]
    outs = [degrade(img, name, s, (1.0, 1.0, 1.0), seed=5) for s in severities]
    assert all(o.shape == img.shape and float(o[:, :3].abs().max()) == 0.0 for o in outs)
    assert torch.equal(degrade(img, name, severities[0], (1.0, 1.0, 1.0), seed=5), outs[0])
    changes = [float((o - img).abs().mean()) for o in outs]
    assert all(c > 0 for c in changes), changes
    if name in ("slice_thickness", "kernel_smooth", "kernel_sharp", "rician_noise", "bias_field", "ghosting", "gibbs"):
        assert changes == sorted(changes), changes  # monotone in the severity


# ------------------------------------------------------------------------------------------- bundle workflows
def _datalist(trained, tmp_path, real: bool) -> str:
    """Two synthetic cases with references, the real case (if present), and a case missing its FLAIR."""
    cases = []
    for cid in ("BraTS20_Training_001", "BraTS20_Training_002"):
        d = trained / "data" / cid
        cases.append(
            {"image": [str(d / f"{cid}_{m}.nii.gz") for m in MODALITIES], "label": str(d / f"{cid}_seg.nii.gz")}
        )
    if real:
        files = [str(EXAMPLE_CASE / f"TCGA-DU-7294_{m}.nii.gz") for m in MODALITIES]
        cases.append({"image": files, "label": str(EXAMPLE_CASE / "TCGA-DU-7294_seg.nii.gz")})
    bad = tmp_path / "bad"
    shutil.copytree(trained / "data" / "BraTS20_Training_003", bad / "BraTS20_Training_003")
    os.remove(bad / "BraTS20_Training_003" / "BraTS20_Training_003_flair.nii.gz")
    cases.append(
        {"image": [str(bad / "BraTS20_Training_003" / f"BraTS20_Training_003_{m}.nii.gz") for m in MODALITIES]}
    )
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"testing": cases}))
    return str(path)


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    real = EXAMPLE_CASE.is_dir()
    out = tmp / "out"
    proc = bundle("report", "--bundle_root", str(trained), "--dataset_dir", _datalist(trained, tmp, real),
                  "--output_dir", str(out), "--network_def#channels", str(CHANNELS), "--roi_size", "[64,64,64]",
                  "--num_workers", "0", "--device", "cpu", "--report_tta_axes", "[0]",
                  configs=("inference.json", "report.json"))  # fmt: skip
    return out, proc, real, trained


@pytest.mark.slow
def test_report_writes_the_case_files_and_skips_the_bad_case(report):
    out, proc, real, trained = report
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one bad case
    assert "BraTS20_Training_003" in proc.stdout and "flair" in proc.stdout.lower()
    cases = ["BraTS20_Training_001", "BraTS20_Training_002"] + (["TCGA-DU-7294"] if real else [])
    assert sorted(p.name for p in out.iterdir()) == sorted(cases)
    for cid in cases:
        files = sorted(p.name for p in (out / cid).iterdir())
        expected = [f"{cid}_seg.nii.gz", "gradcam_ET.nii.gz", "gradcam_TC.nii.gz", "gradcam_WT.nii.gz"]
        pdf = ["report.pdf"] if find_chromium() else []  # without Chromium one log line says there is no PDF
        assert files == [*expected, "report.html", *pdf, "uncertainty.nii.gz"]  # nothing temporary left
        ref = nib.load((EXAMPLE_CASE if cid.startswith("TCGA") else trained / "data" / cid) / f"{cid}_t1.nii.gz")
        seg = nib.load(out / cid / f"{cid}_seg.nii.gz")
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
        peaks = []
        for region in ("TC", "WT", "ET"):
            cam = np.asarray(nib.load(out / cid / f"gradcam_{region}.nii.gz").dataobj)
            assert cam.shape == ref.shape and cam.min() >= 0 and cam.max() <= 1
            peaks.append(float(cam.max()))
        # each map is scaled by its maximum (resampled back to the input grid): peak near 1, or all zero when
        # the layer holds no positive evidence for the region
        assert all(p == 0 or p > 0.9 for p in peaks) and max(peaks) > 0.9, peaks
        unc = np.asarray(nib.load(out / cid / "uncertainty.nii.gz").dataobj)
        assert unc.shape == (*ref.shape, 3) and unc.min() >= 0 and unc.max() <= 1
        page = (out / cid / "report.html").read_text()
        assert "Metrics against" in page and "Dice" in page and "TTA disagreement" in page
        # figures embedded: segmentation, reference, native images, Grad-CAM, uncertainty
        assert page.count("src='data:image/png;base64,") == 5 and page.count("src=") == 5
        assert "Lesions" in page and "Radiological convention" in page and "md5" in page
        assert "ResUNet BraTS segmentation" in page and "checkpoint sha256" in page


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    out = report[0]
    page = out / "BraTS20_Training_001" / "report.html"
    assert "<script" not in page.read_text() and "<link" not in page.read_text()  # self-contained, static
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,4800",
           f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape == (4800, 1100, 3)
    coloured = (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).mean()  # overlays in colour, not a blank page
    assert pixels.std() > 30 and coloured > 0.01, (pixels.std(), coloured)


def _browser() -> str:
    browser = find_chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed: no browser to render the report in (apt-get install chromium)")
    return browser


def _screenshot(browser: str, page, shot, height: int = 2600) -> np.ndarray:
    from PIL import Image

    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size=1100,{height}",
           f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(shot).convert("RGB"), dtype=int)


def _colour_pieces(pixels: np.ndarray, rgb, min_pixels: int) -> int:
    """Connected pieces of at least ``min_pixels`` pixels of the colour ``rgb`` (within 3 per channel)."""
    from scipy import ndimage

    same = (np.abs(pixels - np.asarray(rgb)) <= 3).all(-1)
    pieces, n = ndimage.label(same)
    return int((np.bincount(pieces.ravel())[1:] >= min_pixels).sum()) if n else 0


def _reference_side(case_dir, reference) -> str:
    """The patient's side of the reference tumour, from the files alone (nibabel's canonical RAS view): the
    share of its voxels beyond the middle of the brain's left-right extent."""
    t1 = np.asanyarray(nib.as_closest_canonical(nib.load(next(case_dir.glob("*_t1.nii.gz")))).dataobj)
    ref = np.asanyarray(nib.as_closest_canonical(nib.load(reference)).dataobj) > 0
    xs = np.flatnonzero(t1.any((1, 2)))
    right = float((np.argwhere(ref)[:, 0] > (xs[0] + xs[-1]) / 2).mean())
    return "right" if right >= 0.9 else "left" if right <= 0.1 else "both"


REAL_REPORT_CASES = [(EXAMPLE_CASE, EXAMPLE_CASE / "TCGA-DU-7294_seg.nii.gz"),
                     (UPENN_CASE, UPENN_CASE / "UPENN-GBM-00003_11_seg.nii.gz")]  # fmt: skip


@pytest.fixture(scope="module")
def real_reports(tmp_path_factory):
    """``report`` with the shipped weights, run once over the shared real cases (the tracked example case, and
    UPENN-GBM-00003_11 when ../shared/data has it), with their references."""
    tmp = tmp_path_factory.mktemp("real_report")
    cases = [(d, r) for d, r in REAL_REPORT_CASES if r.is_file()]
    items = [{"image": [str(d / f"{d.name}_{m}.nii.gz") for m in MODALITIES], "label": str(r)} for d, r in cases]
    (tmp / "datalist.json").write_text(json.dumps({"testing": items}))
    proc = bundle("report", "--bundle_root", str(ROOT), "--dataset_dir", str(tmp / "datalist.json"),
                  "--output_dir", str(tmp / "out"), "--device", "cpu", "--num_workers", "0",
                  configs=("inference.json", "report.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "out", cases, proc


@pytest.mark.slow
def test_real_case_reports_show_the_legend_marks_and_sides_in_a_browser(real_reports, tmp_path):
    """Each shared real case's page in headless Chromium: the three label colours of the legend and the
    orientation tags of the segmentation figure are on screen; the lesion table puts the largest lesion on the
    side where the reference tumour is (computed from the files alone); the stages are logged with times."""
    out, cases, proc = real_reports
    browser = _browser()
    log = proc.stdout + proc.stderr  # the stages are logged with their times
    assert "segmentation and uncertainty (TTA) done in" in log and "Grad-CAM done in" in log
    for case_dir, reference in cases:
        folder = out / case_dir.name
        page = (folder / "report.html").read_text()
        assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"
        assert "Radiological convention" in page and "Reference: " in page and "md5" in page
        assert page.count("  md5 ") == 5  # the four sequences and the reference
        row = re.search(r"<tr><td>1</td>(?:<td>[^<]*</td>){5}<td>([^<]*)</td></tr>", page)
        assert row and row.group(1).split(" ")[0] == _reference_side(case_dir, reference), row
        pixels = _screenshot(browser, folder / "report.html", tmp_path / f"{case_dir.name}.png")
        for rgb in CLASS_COLOURS:  # the legend's swatches (28 x 16 px) at least
            assert _colour_pieces(pixels, rgb, 300) >= 1, rgb
        assert _colour_pieces(pixels, MARK_COLOUR, 40) >= 4 * 6, "orientation tags missing"


@pytest.mark.slow
def test_robustness_writes_csv_markdown_and_curves(trained, tmp_path):
    out = tmp_path / "rob"
    data = tmp_path / "data"
    shutil.copytree(trained / "data" / "BraTS20_Training_002", data / "BraTS20_Training_002")
    proc = bundle("robustness", "--bundle_root", str(trained), "--dataset_dir", str(data), "--output_dir", str(out),
                  "--network_def#channels", str(CHANNELS), "--roi_size", "[32,32,32]", "--num_workers", "0",
                  "--device", "cpu", "--degradations", "['slice_thickness','missing_modality']",
                  configs=("inference.json", "robustness.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["robustness.csv", "robustness.md", "robustness.png"]
    with open(out / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"case_id", "degradation", "severity", "dice_ET", "dice_TC", "dice_WT"} <= set(rows[0])
    removed = ("T1", "T1ce", "T2", "FLAIR", "T1+T2", "T1+T1ce+T2")
    assert [(r["degradation"], r["severity"]) for r in rows] == [("none", "0")] + [
        ("slice_thickness", s) for s in ("3", "5", "7")] + [("missing_modality", m) for m in removed]  # fmt: skip
    clean = rows[0]
    assert all(float(clean[f"dice_clean_{r}"]) == 1.0 and float(clean[f"volume_change_ml_{r}"]) == 0.0
               for r in ("TC", "WT", "ET"))  # fmt: skip
    assert all(0.0 <= float(r[f"dice_{g}"]) <= 1.0 for r in rows for g in ("TC", "WT", "ET"))  # has a reference
    assert any(float(r["dice_clean_WT"]) < 1.0 for r in rows[1:]), "no degradation changed the prediction"
    assert "| slice_thickness | 7 |" in (out / "robustness.md").read_text()
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
