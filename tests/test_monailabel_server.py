"""MONAI Label end to end: a real server (monailabel 0.8.5, its own environment) on a free loopback port serves
this bundle over synthetic four-modality studies; a prediction is fetched, a corrected label saved, a short
training on the saved labels writes new weights, and the next inference uses them.

The server environment is made by ``apps/server.py setup`` (several GB on its first run, then reused from the
cache while the pinned files are unchanged); the tests are skipped, with the reason, only if it cannot be made.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import nibabel as nib
import numpy as np
import pytest
import torch

from apps import server
from apps.resunet_brats.lib.models import MODELS, missing_files
from scripts.synthetic.phantom import write_dataset, write_monailabel_datastore
from tests._bundle import ROOT

pytestmark = pytest.mark.slow

SHAPE = (48, 56, 40)
BRATS_VALUES = {0, 1, 2, 4}


@pytest.fixture(scope="module")
def venv_dir():
    try:
        return server.setup(quiet=True)
    except (RuntimeError, OSError) as e:
        pytest.skip(f"the MONAI Label server environment could not be made: {e}")


def _bundle(*args, configs, cwd):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *args,
        "--meta_file",
        str(cwd / "configs" / "metadata.json"),
        "--config_file",
        str([str(cwd / "configs" / c) for c in configs]),
    ]
    proc = subprocess.run(
        cmd, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(cwd)), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    """The bundle copied to a temporary folder (the server writes new weights there), with weights from a short
    training on synthetic BraTS-layout cases for every model whose configs exist."""
    root = tmp_path_factory.mktemp("bundle")
    for part in ("configs", "scripts"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    write_dataset(root / "data", num_cases=4, seed=5, shape=SHAPE, progress=False)
    served = [name for name, model in MODELS.items() if not missing_files(root, model)]
    for name in served:
        _bundle(
            "training",
            "--bundle_root",
            str(root),
            "--dataset_dir",
            str(root / "data"),
            "--epochs",
            "1",
            "--val_interval",
            "1",
            "--num_folds",
            "2",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            configs=MODELS[name].train_configs,
            cwd=root,
        )
        assert (root / "models" / MODELS[name].weights).is_file()
    return root, served


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method, url, data=None, headers=None, timeout=600):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _multipart(fields, files):
    """A multipart/form-data body: ``fields`` name -> text, ``files`` name -> (filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


@contextlib.contextmanager
def _serving(venv_dir, studies, conf, log_path, app_dir=server.APP_DIR):
    """A MONAI Label server on a free loopback port serving ``app_dir`` over ``studies``: yields its URL and
    ``/info/``, stops it afterwards."""
    port = _free_port()
    cmd = server.server_command(venv_dir, str(studies), "127.0.0.1", port, conf, app_dir)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, env=server.server_env(venv_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                info = json.loads(_request("GET", f"{url}/info/", timeout=10))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not come up (exit {proc.poll()}):\n{log_path.read_text()[-6000:]}")
                time.sleep(2)
        yield url, info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def live_server(venv_dir, bundle_copy, tmp_path_factory):
    root, served = bundle_copy
    studies = tmp_path_factory.mktemp("studies")
    write_monailabel_datastore(studies, num_cases=4, num_labelled=2, seed=9, shape=SHAPE, progress=False)
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    conf = [("bundle_path", str(root)), ("preload", "false")]
    with _serving(venv_dir, studies, conf, log_path) as (url, info):
        yield {"url": url, "info": info, "root": root, "served": served, "studies": studies, "log": log_path}


def test_stock_monaibundle_app_segments_a_four_modality_study(venv_dir, bundle_copy, tmp_path):
    """MONAI Label's own ``monaibundle`` app, unchanged, with the bundle copied into ``<app>/model/<name>``: it
    reads configs/inference.json alone and returns a BraTS label map on the study's grid."""
    root, _ = bundle_copy
    app = tmp_path / "monaibundle"
    shutil.copytree(server.stock_app(venv_dir), app, ignore=shutil.ignore_patterns("__pycache__"))
    bundle = app / "model" / "resunet_brats"
    for part in ("configs", "scripts", "models"):
        shutil.copytree(root / part, bundle / part, ignore=shutil.ignore_patterns("__pycache__", "checkpoint_*"))
    studies = tmp_path / "studies"
    write_monailabel_datastore(studies, num_cases=1, seed=11, shape=SHAPE, progress=False)
    # the bundle is local (no model-zoo download); this test is about automatic inference, so no trainers
    conf = [("models", "resunet_brats"), ("zoo_source", "local"), ("sam2", "false"), ("skip_trainers", "true")]
    with _serving(venv_dir, studies, conf, tmp_path / "server.log", app) as (url, info):
        assert info["models"]["resunet_brats"]["type"] == "segmentation"
        srv = {"url": url, "studies": studies}
        study = _study(srv, "BraTS20_Training_001")
        pred = _infer(srv, "resunet_brats", "BraTS20_Training_001")
    assert study.shape == (*SHAPE, 4) and pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, study.affine, atol=1e-4)
    values = set(np.unique(np.asarray(pred.dataobj)).tolist())
    assert values <= BRATS_VALUES, values


def _infer(srv, model, image, params=None):
    body, headers = _multipart({"params": json.dumps(params or {})}, {})
    data = _request("POST", f"{srv['url']}/infer/{model}?image={image}&output=image", body, headers)
    path = srv["studies"].parent / f"{model}_{image}_{uuid.uuid4().hex}.nii.gz"
    path.write_bytes(data)
    return nib.load(path)


def _study(srv, image):
    return nib.load(srv["studies"] / f"{image}.nii.gz")


def test_info_lists_the_bundle_models_and_trainers(live_server):
    info = live_server["info"]
    assert "resunet_brats" in info["models"] and "resunet_brats" in info["trainers"]
    labels = info["models"]["resunet_brats"]["labels"]
    assert labels == {"necrotic_core": 1, "edema": 2, "enhancing_tumor": 4}
    if "resunet_brats_deepedit" in live_server["served"]:
        assert info["models"]["resunet_brats_deepedit"]["type"] == "deepedit"
        assert {"resunet_brats_deepedit", "resunet_brats_deepedit_seg"} <= set(info["models"])


def test_automatic_segmentation_is_a_label_map_aligned_with_the_study(live_server):
    study = _study(live_server, "BraTS20_Training_003")
    pred = _infer(live_server, "resunet_brats", "BraTS20_Training_003")
    assert study.shape == (*SHAPE, 4) and pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, study.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= BRATS_VALUES


def test_clicks_give_a_label_map_aligned_with_the_study(live_server):
    if "resunet_brats_deepedit" not in live_server["served"]:
        pytest.skip("the bundle has no DeepEdit configs")
    study = _study(live_server, "BraTS20_Training_004")
    centre = [int(s) // 2 for s in SHAPE]
    clicks = {"edema": [centre], "background": [[2, 2, 2]]}
    for model, params in (("resunet_brats_deepedit", clicks), ("resunet_brats_deepedit_seg", {})):
        pred = _infer(live_server, model, "BraTS20_Training_004", params)
        assert pred.shape == SHAPE, model
        np.testing.assert_allclose(pred.affine, study.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= BRATS_VALUES


def test_saved_correction_is_trained_on_and_the_new_weights_are_served(live_server):
    srv, image = live_server, "BraTS20_Training_003"
    # The clinician's correction: the prediction with a block of oedema painted in, saved as the final label.
    pred = _infer(srv, "resunet_brats", image)
    corrected = np.asarray(pred.dataobj).copy()
    corrected[20:28, 24:32, 16:24] = 2
    path = srv["studies"].parent / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(corrected.astype(np.uint8), pred.affine), path)
    body, headers = _multipart({"params": "{}"}, {"label": ("corrected.nii.gz", path.read_bytes())})
    saved = json.loads(_request("PUT", f"{srv['url']}/datastore/label?image={image}&tag=final", body, headers))
    assert saved["image"] == image
    label_file = srv["studies"] / "labels" / "final" / f"{image}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(label_file).dataobj), corrected)
    datastore = json.loads(_request("GET", f"{srv['url']}/datastore/?output=all"))
    labelled = [k for k, v in datastore["objects"].items() if v.get("labels", {}).get("final")]
    assert sorted(labelled) == ["BraTS20_Training_001", "BraTS20_Training_002", image]

    weights = srv["root"] / "models" / "model.pt"
    before = torch.load(weights, map_location="cpu", weights_only=True)
    mtime = weights.stat().st_mtime
    params = {"max_epochs": 1, "val_split": 0.34, "device": "cpu", "multi_gpu": False, "pretrained": True}
    _request(
        "POST",
        f"{srv['url']}/train/resunet_brats?run_sync=true",
        json.dumps(params).encode(),
        {"Content-Type": "application/json"},
        timeout=900,
    )
    log = srv["log"].read_text()
    assert "Total Records in Dataset: 3" in log, log[-4000:]  # the two earlier labels and the correction
    assert weights.stat().st_mtime > mtime, f"no new weights written\n{log[-4000:]}"
    after = torch.load(weights, map_location="cpu", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    pred = _infer(srv, "resunet_brats", image)
    assert pred.shape == SHAPE
    assert "Reload model from cache" in srv["log"].read_text()  # MONAI Label's infer task took the new file
