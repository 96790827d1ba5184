"""The bundle as users run it: ``python -m monai.bundle`` in real subprocesses on real NIfTI files.

A tiny ResUNet trains for two epochs on a few small synthetic cases, resumes from its full checkpoint,
segments the bundled real case examples/TCGA-DU-7294 (geometry, not accuracy, is checked), evaluates on
the validation fold and exports to TorchScript.
"""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.synthetic.phantom import write_dataset
from tests._bundle import EXAMPLE_CASE, ROOT, TINY, TINY_NETWORK

pytestmark = pytest.mark.slow


def bundle(*args, config=("train.json",), cwd=ROOT):
    configs = [str(ROOT / "configs" / c) for c in config]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        *args,
        "--meta_file",
        str(ROOT / "configs" / "metadata.json"),
        "--config_file",
        str(configs) if len(configs) > 1 else configs[0],
    ]
    return cmd


def run(cmd, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    write_dataset(root / "data", num_cases=6, seed=3, shape=(48, 56, 40), progress=False)
    common = ["--bundle_root", str(root), "--dataset_dir", str(root / "data"), *TINY]
    log = run(bundle("run", "training", *common, "--epochs", "2", "--val_interval", "1", "--tracking", "mlflow"))
    return root, common, log


def trained_weights(root):
    """The weights of the ``trained`` run: train.json's default run folder, ``runs/train``."""
    return ["--ckpt_path", str(root / "runs" / "train" / "model.pt")]


def test_training_writes_best_model_and_full_checkpoint(trained):
    root, _, log = trained
    assert "val_mean_dice" in log and "val_hd95_wt" in log and "data loading: waited" in log
    model = torch.load(root / "runs" / "train" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.0") for k in model)
    ckpt = torch.load(root / "runs" / "train" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "lr_scheduler", "trainer", "best_metrics", "rng"}
    assert ckpt["trainer"]["iteration"] == 2 * ckpt["trainer"]["epoch_length"]  # ignite stores epochs as iterations
    assert list((root / "eval").glob("events.out.tfevents*")), "no TensorBoard log"


def test_mlflow_tracking_writes_a_local_run(trained):
    import mlflow

    root, _, _ = trained
    mlflow.set_tracking_uri(f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    assert runs["metrics.val_mean_dice"].notna().all() and runs["metrics.train_loss"].notna().all()


def test_resume_continues_from_the_last_checkpoint(trained):
    root, common, _ = trained
    log = run(bundle("run", *common, "--epochs", "3", "--val_interval", "1", "--resume", "true"))
    assert "Restored all variables from" in log and "checkpoint_epoch=2.pt" in log
    assert "Epoch[3] Complete" in log and "Epoch[1] Complete" not in log.split("Restored")[1]
    state = torch.load(root / "runs" / "train" / "checkpoint_epoch=3.pt", weights_only=True)["trainer"]
    assert state["iteration"] == 3 * state["epoch_length"]


def test_inference_on_real_case_keeps_input_geometry(trained, tmp_path):
    root, _, _ = trained
    out = tmp_path / "pred"
    run(
        bundle(
            "run",
            "--bundle_root",
            str(root),
            *TINY_NETWORK,
            *trained_weights(root),
            "--dataset_dir",
            str(EXAMPLE_CASE),
            "--output_dir",
            str(out),
            "--roi_size",
            "[64,64,64]",
            config=("inference.json",),
        )
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == ["TCGA-DU-7294.nii.gz"], written
    pred = nib.load(out / "TCGA-DU-7294.nii.gz")
    ref = nib.load(EXAMPLE_CASE / "TCGA-DU-7294_t1.nii.gz")
    assert pred.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-4)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine)
    assert pred.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_evaluate_writes_per_case_and_summary_metrics(trained, tmp_path):
    root, common, _ = trained
    out = tmp_path / "metrics"
    log = run(
        bundle(
            "run",
            "evaluating",
            *common,
            *trained_weights(root),
            "--output_dir",
            str(out),
            config=("inference.json", "evaluate.json"),
        )
    )
    assert "| Dice |" in log and "| HD95 (mm) |" in log  # the markdown table is printed
    with open(out / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # the 2 validation cases of fold 0 (6 cases, 3 folds)
    metrics = ("dice", "hd95", "sensitivity", "specificity", "volume_diff_ml")
    assert {f"{m}_{r}" for m in metrics for r in ("TC", "WT", "ET", "mean")} <= set(rows[0])
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["failed"] == [] and summary["missing_predictions"] == []
    assert all(summary["metrics"][m][r]["n"] == 2 for m in metrics for r in ("TC", "WT", "ET", "mean"))
    assert "| Dice |" in (out / "metrics_summary.md").read_text()
    assert (out / "metrics_boxplot.png").read_bytes()[:4] == b"\x89PNG"
    preds = sorted((out / "predictions").iterdir())
    assert [p.name for p in preds] == sorted(f"{r['case_id']}.nii.gz" for r in rows)
    for p in preds:  # label maps in the geometry of the case's images
        ref = nib.load(root / "data" / p.name[: -len(".nii.gz")] / p.name.replace(".nii.gz", "_seg.nii.gz"))
        pred = nib.load(p)
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)


def test_torchscript_export_runs(trained, tmp_path):
    root, common, _ = trained
    ts = tmp_path / "model.ts"
    run(
        bundle(
            "ckpt_export",
            "network_def",
            "--filepath",
            str(ts),
            "--ckpt_file",
            str(root / "runs" / "train" / "model.pt"),
            "--network_def#channels",
            "[8,16,32,64]",
            "--bundle_root",
            str(root),
        )
    )
    net = torch.jit.load(str(ts))
    assert net(torch.rand(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
