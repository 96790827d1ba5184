"""Tests for knowledge distillation (scripts/distill.py, configs/distill.json): the per-region sigmoid loss,
its wiring into MONAI's trainer, loading the teacher, and one real distillation epoch of the bundle."""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.losses import DiceCELoss

from scripts.distill import DistillationInferer, DistillationLoss, RegionDistillationLoss, load_teacher
from scripts.networks import ResUNet, StudentUNet
from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT

SMALL = (8, 16, 32, 64)


def _logits(seed, shape=(2, 3, 8, 8, 8)):
    torch.manual_seed(seed)
    return 3 * torch.randn(shape)


def test_region_kd_is_zero_for_equal_logits_and_positive_otherwise():
    kd = RegionDistillationLoss(temperature=2.0)
    z = _logits(0)
    assert kd(z, z).abs().item() < 1e-6
    assert kd(_logits(1), z).item() > 0.01


def test_region_kd_is_the_binary_kl_of_tempered_sigmoids_times_t_squared():
    zs, zt, t = _logits(1), _logits(0), 3.0
    ps, pt = torch.sigmoid(zs / t), torch.sigmoid(zt / t)
    kl = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    torch.testing.assert_close(RegionDistillationLoss(t)(zs, zt), kl.mean() * t * t, rtol=1e-4, atol=1e-6)


def test_region_kd_pulls_the_student_towards_the_teacher_per_region():
    """Gradient descent on the KD term alone makes every region's probabilities approach the teacher's."""
    teacher, student = _logits(0), _logits(1).requires_grad_(True)
    kd = RegionDistillationLoss(temperature=2.0)
    before = (torch.sigmoid(student) - torch.sigmoid(teacher)).abs().mean(dim=(0, 2, 3, 4))
    optimizer = torch.optim.SGD([student], lr=student.numel() / 2)  # the loss is a mean over elements
    for _ in range(50):
        optimizer.zero_grad()
        kd(student, teacher).backward()
        optimizer.step()
    after = (torch.sigmoid(student) - torch.sigmoid(teacher)).abs().mean(dim=(0, 2, 3, 4))
    assert torch.all(after < 0.5 * before)


def test_region_kd_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        RegionDistillationLoss(0.0)
    with pytest.raises(ValueError, match="shape"):
        RegionDistillationLoss()(_logits(0), _logits(0, (2, 3, 8, 8, 4)))


def test_inferer_and_loss_combine_teacher_and_ground_truth():
    teacher = ResUNet(channels=SMALL).eval()
    student = StudentUNet(channels=SMALL)
    inferer = DistillationInferer(teacher)
    gt_loss = DiceCELoss(sigmoid=True, batch=True)
    loss = DistillationLoss(gt_loss, inferer, temperature=2.0, kd_weight=0.5, gt_weight=2.0)
    x = torch.randn(2, 4, 16, 16, 16)
    label = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    pred = inferer(x, student)
    with torch.no_grad():
        torch.testing.assert_close(inferer.teacher_logits, teacher(x))
    total = loss(pred, label)
    expected = 2.0 * gt_loss(pred, label) + 0.5 * RegionDistillationLoss(2.0)(pred, teacher(x).detach())
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is not trained
    assert student.head.weight.grad is not None
    with pytest.raises(RuntimeError, match="DistillationInferer"):
        DistillationLoss(gt_loss, DistillationInferer(teacher))(pred, label)


def _teacher_from_config(configs):
    """The ResUNet as the configs build it (the shipped norm and activation), with fresh weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("full_checkpoint", [False, True])
def test_load_teacher_from_config_and_weights(tmp_path, full_checkpoint):
    overlay = tmp_path / "teacher.json"
    overlay.write_text(json.dumps({"network_def#channels": list(SMALL)}))
    original = _teacher_from_config([str(ROOT / "configs" / "train.json"), str(overlay)]).eval()
    state = original.state_dict()
    torch.save({"model": state, "epoch": 3} if full_checkpoint else state, tmp_path / "model.pt")
    teacher = load_teacher([str(ROOT / "configs" / "train.json"), str(overlay)], str(tmp_path / "model.pt"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), original(x))
    with pytest.raises(FileNotFoundError, match="train the teacher"):
        load_teacher(str(ROOT / "configs" / "train.json"), str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*model\.pt does not fit the configured ResUNet"):
        load_teacher(str(ROOT / "configs" / "train.json"), str(tmp_path / "model.pt"))


@pytest.mark.slow
def test_one_distillation_epoch_of_the_bundle(tmp_path):
    """``python -m monai.bundle run training`` with train.json + student.json + distill.json on tiny real files."""
    write_dataset(tmp_path / "data", num_cases=4, seed=5, shape=(48, 56, 40), progress=False)
    (tmp_path / "models").mkdir()
    teacher_overlay = tmp_path / "teacher.json"
    teacher_overlay.write_text(json.dumps({"network_def#channels": list(SMALL)}))
    teacher = _teacher_from_config([str(ROOT / "configs" / "train.json"), str(teacher_overlay)])
    torch.save(teacher.state_dict(), tmp_path / "models" / "model.pt")
    configs = [str(ROOT / "configs" / c) for c in ("train.json", "student.json", "distill.json")]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--meta_file",
        str(ROOT / "configs" / "metadata.json"),
    ]
    cmd += ["--config_file", str(configs), "--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data")]
    cmd += ["--teacher_config", str([str(ROOT / "configs" / "train.json"), str(teacher_overlay)])]
    cmd += ["--roi_size", "[32,32,32]", "--num_workers", "0", "--num_folds", "4", "--device", "cpu"]
    cmd += ["--epochs", "1", "--val_interval", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    student = StudentUNet()  # configs/student.json's network: the defaults
    student.load_state_dict(torch.load(tmp_path / "models" / "student.pt", weights_only=True))
    assert [p.name for p in (tmp_path / "models" / "student").iterdir()] == ["checkpoint_epoch=1.pt"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "student", "student.pt"]
