"""Clinical validation tools on real files: Grad-CAM (with the model-randomisation sanity test), TTA
uncertainty, the degradations, and the ``report`` and ``robustness`` bundle workflows run as users run them
(``python -m monai.bundle run`` in subprocesses, a tiny network trained for the purpose, synthetic cases plus
the bundled real case examples/TCGA-DU-7294), the HTML report opened in headless Chromium."""

import csv
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from apps.pacs.ohif import find_chromium
from scripts.conventions import MODALITIES
from scripts.degradations import DEGRADATIONS, degrade
from scripts.explain import RegionGradCAM, RegionScore, randomisation_check
from scripts.inferers import FlipTTAInferer
from scripts.synthetic.phantom import write_dataset
from scripts.uncertainty import binary_entropy, tta_uncertainty
from tests._bundle import EXAMPLE_CASE, ROOT, TINY

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
                  "--epochs", "2", "--val_interval", "2", configs=("train.json",))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _network(root) -> torch.nn.Module:
    """The inference config's network with the tiny widths, and the trained weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["network_def#channels"] = CHANNELS
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "runs" / "train" / "model.pt", weights_only=True))
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
        assert files == [*expected, "report.html", "uncertainty.nii.gz"]  # nothing temporary left
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
        assert page.count("src='data:image/png;base64,") == 3 and page.count("src=") == 3  # figures embedded
        assert "ResUNet BraTS segmentation" in page and "checkpoint sha256" in page


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(report, tmp_path):
    try:
        browser = find_chromium()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip(str(e))
    out = report[0]
    page = out / "BraTS20_Training_001" / "report.html"
    assert "<script" not in page.read_text() and "<link" not in page.read_text()  # self-contained, static
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,2400",
           f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape == (2400, 1100, 3)
    coloured = (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).mean()  # overlays in colour, not a blank page
    assert pixels.std() > 30 and coloured > 0.01, (pixels.std(), coloured)


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
