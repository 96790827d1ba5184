"""MONAI Label end to end: a real server (monailabel 0.8.5, its own environment) on a free loopback port serves
this bundle over synthetic four-modality studies; a prediction is fetched, a corrected label saved, a short
training on the saved labels writes new weights, and the next inference uses them.

The server environment is made by ``apps/server.py setup`` (several GB on its first run, then reused from the
cache while the pinned files are unchanged); the tests are skipped, with the reason, only if it cannot be made.
"""

import json
import os
import shutil
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
from scripts.conventions import MODALITIES
from scripts.synthetic.phantom import write_dataset, write_monailabel_datastore
from tests._bundle import ROOT, UPENN_CASE
from tests._monailabel import REAL_CASE, label_regions, md5, multipart, region_dice, request, serving, short_finetune

pytestmark = pytest.mark.slow

SHAPE = (48, 56, 40)
BRATS_VALUES = {0, 1, 2, 4}


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
            "--ckpt_path",
            str(root / "models" / MODELS[name].weights),
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
    shutil.copytree(root / "models", root / "models.trained")  # as trained, for servers started later
    short_finetune(root)
    return root, served


@pytest.fixture(scope="module")
def live_server(venv_dir, bundle_copy, tmp_path_factory):
    root, served = bundle_copy
    studies = tmp_path_factory.mktemp("studies")
    write_monailabel_datastore(studies, num_cases=4, num_labelled=2, seed=9, shape=SHAPE, progress=False)
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    conf = [("bundle_path", str(root)), ("preload", "false")]
    with serving(venv_dir, studies, conf, log_path) as (url, info):
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
    with serving(venv_dir, studies, conf, tmp_path / "server.log", app) as (url, info):
        assert info["models"]["resunet_brats"]["type"] == "segmentation"
        srv = {"url": url, "studies": studies}
        study = _study(srv, "BraTS20_Training_001")
        pred = _infer(srv, "resunet_brats", "BraTS20_Training_001")
    assert study.shape == (*SHAPE, 4) and pred.shape == SHAPE
    np.testing.assert_allclose(pred.affine, study.affine, atol=1e-4)
    values = set(np.unique(np.asarray(pred.dataobj)).tolist())
    assert values <= BRATS_VALUES, values


def _infer(srv, model, image, params=None):
    body, headers = multipart({"params": json.dumps(params or {})}, {})
    data = request("POST", f"{srv['url']}/infer/{model}?image={image}&output=image", body, headers)
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


def _post_json(url, params, timeout=900):
    return request("POST", url, json.dumps(params).encode(), {"Content-Type": "application/json"}, timeout=timeout)


def _http_error(method, url, params=None):
    """(status, detail) of a request that must fail."""
    body = json.dumps(params).encode() if params is not None else None
    with pytest.raises(urllib.error.HTTPError) as e:
        request(method, url, body, {"Content-Type": "application/json"} if body else {})
    return e.value.code, json.loads(e.value.read())["detail"]


def _silenced(weights, path):
    """Weights whose network predicts no tumour anywhere (every weight 0, every bias -10): Dice 0 on any label."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key, value in state.items():
        if value.is_floating_point():
            value.fill_(-10.0 if key.endswith("bias") else 0.0)
    torch.save(state, path)


def _save_label(srv, image, label, affine):
    path = srv["studies"].parent / f"label_{image}_{uuid.uuid4().hex}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label).astype(np.uint8), affine), path)
    body, headers = multipart({"params": "{}"}, {"label": (path.name, path.read_bytes())})
    saved = json.loads(request("PUT", f"{srv['url']}/datastore/label?image={image}&tag=final", body, headers))
    assert saved["image"] == image


def _train_status(srv):
    return json.loads(request("GET", f"{srv['url']}/train/"))


def test_startup_log_gives_the_label_map_values(live_server):
    """The start-up log names the values of the label map the server returns (as /info/ does), not the network's
    region channels of metadata.json (``TC => 0``)."""
    log = live_server["log"].read_text()
    assert "Label map: necrotic_core => 1 / edema => 2 / enhancing_tumor => 4" in log, log[-4000:]
    assert "TC => 0" not in log and "; Label: " not in log


def test_uploads_stay_in_the_datastore_and_a_label_is_a_nifti_label_map(live_server):
    """Issue 27: a tag, id or file name that is a path is HTTP 400 and writes nothing anywhere; a label that is not
    a NIfTI label map of the study (a .txt file, text named .nii.gz) is HTTP 400 naming the problem, so no later
    training fails on it; the datastore is left as it was."""
    srv, image = live_server, "BraTS20_Training_003"
    studies = srv["studies"]
    escaped = (studies / "labels" / "../../../../x/y").resolve()
    before = {str(p): md5(p) for p in studies.rglob("*") if p.is_file()}
    nifti = studies.parent / "upload.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), nifti)
    for query in (f"image={image}&tag=../../../../x/y", "image=../../x&tag=final", f"image={image}&tag=.."):
        body, headers = multipart({"params": "{}"}, {"label": ("upload.nii.gz", nifti.read_bytes())})
        with pytest.raises(urllib.error.HTTPError) as e:
            request("PUT", f"{srv['url']}/datastore/label?{query}", body, headers)
        assert e.value.code == 400 and "not a datastore name" in json.loads(e.value.read())["detail"], query
    assert _http_error("DELETE", f"{srv['url']}/datastore/label?id={image}&tag=../../final")[0] == 400
    for name, content, problem in (
        ("label.txt", b"not a label", "unsupported type"),
        ("label.nii.gz", b"not a label", "not a readable NIfTI file"),
    ):
        body, headers = multipart({"params": "{}"}, {"label": (name, content)})
        with pytest.raises(urllib.error.HTTPError) as e:
            request("PUT", f"{srv['url']}/datastore/label?image={image}&tag=final", body, headers)
        detail = json.loads(e.value.read())["detail"]
        assert e.value.code == 400 and name in detail and problem in detail, detail
    assert not escaped.exists() and not escaped.parent.exists()
    assert {str(p): md5(p) for p in studies.rglob("*") if p.is_file() and p.name != "datastore_v2.json"} == {
        k: v for k, v in before.items() if not k.endswith("datastore_v2.json")
    }


def test_saved_correction_is_trained_on_and_better_weights_are_served(live_server):
    """Three labelled studies with MONAI Label's default val_split: one is held out. The served weights are made
    to predict nothing (Dice 0 on the held-out study), so the new weights (one epoch of the fine-tuning recipe from
    scratch on the other two) validate at least as well and are served, with the studies they were trained on;
    the replaced weights are kept as a version and can be served again; the CLI run's resumable checkpoint stays;
    GET /train/ shows the synchronous run."""
    srv, image = live_server, "BraTS20_Training_003"
    pred = _infer(srv, "resunet_brats", image)
    corrected = np.asarray(pred.dataobj).copy()
    corrected[20:28, 24:32, 16:24] = 2  # the clinician's correction: a block of oedema painted in
    _save_label(srv, image, corrected, pred.affine)
    label_file = srv["studies"] / "labels" / "final" / f"{image}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(label_file).dataobj), corrected)
    datastore = json.loads(request("GET", f"{srv['url']}/datastore/?output=all"))
    labelled = [k for k, v in datastore["objects"].items() if v.get("labels", {}).get("final")]
    assert sorted(labelled) == ["BraTS20_Training_001", "BraTS20_Training_002", image]

    models = srv["root"] / "models"
    weights = models / "model.pt"
    cli_checkpoints = {p: md5(p) for p in models.rglob("checkpoint_epoch=*.pt")}
    assert cli_checkpoints, "the CLI training of the fixture left no resumable checkpoint"
    _silenced(weights, weights)
    silenced_md5 = md5(weights)
    params = {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "pretrained": False}
    result = json.loads(_post_json(f"{srv['url']}/train/resunet_brats?run_sync=true", params))
    log = srv["log"].read_text()

    validation = result["validation"]
    assert validation["mode"] == "held_out", result
    assert validation["validation_cases"] == validation["held_out_studies"] == [image]
    assert validation["training_cases"] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert "no synthetic replay data" in validation["note"]  # the copy has no data/synthetic_mni
    key = result["metric"]
    assert result["served_before"][key] == 0.0, result  # the silenced weights predict no tumour
    assert result["decision"] == "replaced" and result["new"][key] >= 0.0, result
    assert md5(weights) != silenced_md5
    listing = json.loads(request("GET", f"{srv['url']}/versions/resunet_brats"))["versions"]
    by_name = {v["name"]: v for v in listing}
    assert set(by_name) == {result["version"], result["previous_version"]}
    assert by_name[result["previous_version"]]["md5"] == silenced_md5
    assert by_name[result["version"]]["served"] and by_name[result["version"]]["md5"] == md5(weights)
    # the served weights' line of descent: the next retraining never holds these studies out
    assert by_name[result["version"]]["trained_on"] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert (models / "versions" / f"{result['previous_version']}.pt").is_file()
    assert {p: md5(p) for p in cli_checkpoints} == cli_checkpoints, "a CLI checkpoint was deleted or changed"

    status = _train_status(srv)
    assert status["status"] == "DONE" and status["result"] == result, status
    assert any("Retraining result: replaced" in line for line in status["details"]), status

    pred = _infer(srv, "resunet_brats", image)
    assert pred.shape == SHAPE
    reloads = srv["log"].read_text().count("Reload model from cache")
    assert reloads > log.count("Reload model from cache")  # MONAI Label's infer task took the new file

    restored = json.loads(
        request("POST", f"{srv['url']}/versions/resunet_brats/restore?version={result['previous_version']}")
    )
    assert restored["restored"]["name"] == result["previous_version"]
    assert md5(weights) == silenced_md5
    assert _http_error("POST", f"{srv['url']}/versions/resunet_brats/restore?version=19990101T000000Z_0.5000")[0] == 404
    _infer(srv, "resunet_brats", image)
    assert srv["log"].read_text().count("Reload model from cache") > reloads


@pytest.fixture(scope="module")
def sparse_server(venv_dir, bundle_copy, tmp_path_factory):
    """A server on a copy of the bundle serving the shipped weights (and the imputer, ``--conf
    allow_missing_modalities true``), over a datastore with no label yet: the bundled real case twice, complete
    and with T1 and T2 as zero channels."""
    source, _ = bundle_copy
    root = tmp_path_factory.mktemp("bundle_sparse")
    for part in ("configs", "scripts"):
        shutil.copytree(source / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(source / "models.trained", root / "models")
    # served: the shipped weights (trained for epochs, not one), whose predictions are tumour-shaped
    shutil.copyfile(ROOT / "models" / "model.pt", root / "models" / "model.pt")
    shutil.copyfile(ROOT / "models" / "imputer.pt", root / "models" / "imputer.pt")
    studies = tmp_path_factory.mktemp("studies_sparse")
    write_monailabel_datastore(studies, num_cases=3, num_labelled=0, seed=13, shape=SHAPE, progress=False)
    _real_study(studies)
    _real_study(studies, missing=("t1", "t2"))
    log_path = tmp_path_factory.mktemp("server_sparse") / "server.log"
    conf = [("bundle_path", str(root)), ("preload", "false"), ("models", "resunet_brats")]
    conf.append(("allow_missing_modalities", "true"))
    with serving(venv_dir, studies, conf, log_path) as (url, info):
        yield {"url": url, "info": info, "root": root, "studies": studies, "log": log_path}


def _real_study(studies, missing=()):
    """The bundled real case as a 4D study (T1, T1ce, T2, FLAIR): the shipped weights, trained on realistic
    synthetic brains, segment its tumour (they find none in the small geometric phantoms). ``missing`` sequences
    are zero channels, in a study named ``<case>_without_<sequences>``."""
    case = ROOT / "examples" / REAL_CASE
    images = [nib.load(case / f"{REAL_CASE}_{m}.nii.gz") for m in MODALITIES]
    data = np.stack([np.asarray(img.dataobj, dtype=np.int16) for img in images], axis=-1)
    for m in missing:
        data[..., MODALITIES.index(m)] = 0
    name = REAL_CASE + (f"_without_{'_'.join(missing)}" if missing else "")
    nib.save(nib.Nifti1Image(data, images[0].affine), studies / f"{name}.nii.gz")
    return name


def test_a_study_without_some_sequences_is_segmented_and_the_result_names_them(sparse_server):
    """``--conf allow_missing_modalities true``: a study whose T1 and T2 are zero channels is segmented (the
    missing sequences imputed) on its grid, and the result JSON names them; a complete study's names none."""
    srv = sparse_server
    for image, missing in ((f"{REAL_CASE}_without_t1_t2", ["t1", "t2"]), (REAL_CASE, [])):
        body, headers = multipart({"params": "{}"}, {})
        result = json.loads(
            request("POST", f"{srv['url']}/infer/resunet_brats?image={image}&output=json", body, headers)
        )
        assert result["missing_sequences"] == missing, result
    pred = _infer(srv, "resunet_brats", f"{REAL_CASE}_without_t1_t2")
    assert pred.shape == _study(srv, REAL_CASE).shape[:3]
    assert (np.asarray(pred.dataobj) > 0).sum() > 1000, "no tumour found without T1 and T2"


def test_training_that_cannot_train_is_an_http_error(sparse_server):
    """No labelled study: synchronous and asynchronous requests get HTTP 409 with the reason; a bad option 400,
    an unknown trainer 404; nothing is recorded as a training."""
    url = sparse_server["url"]
    for run_sync in ("true", "false"):
        status, detail = _http_error("POST", f"{url}/train/resunet_brats?run_sync={run_sync}", {"max_epochs": 1})
        assert status == 409 and "no study with a final label" in detail, (status, detail)
    status, detail = _http_error("POST", f"{url}/train/resunet_brats?run_sync=true", {"val_split": 1.5})
    assert status == 400 and "val_split" in detail
    assert _http_error("POST", f"{url}/train/no_such_model?run_sync=true", {})[0] == 404
    assert _http_error("GET", f"{url}/train/")[0] == 404  # "No Train Tasks Found": nothing ran


def test_one_label_is_validated_on_and_worse_weights_are_not_served(sparse_server):
    """One labelled study and no synthetic replay data: with the default val_split nothing can be held out, so the
    request is refused (409) with the remedies. With val_split 0 it is trained and validated on (and the result
    says so). Its label is the served model's own prediction (/infer), so the served (shipped) weights score Dice 1
    on every region it holds (the validation scores the regions of the served label map); new weights
    trained from scratch for one epoch score less and are not served. Then an asynchronous
    run: its status and its result line are visible at GET /train/."""
    srv, image = sparse_server, REAL_CASE
    pred = _infer(srv, "resunet_brats", image)
    label = np.asarray(pred.dataobj)
    assert (label > 0).sum() > 50, "the fixture's weights predict (almost) no tumour: no label to validate on"
    _save_label(srv, image, label, pred.affine)
    weights = srv["root"] / "models" / "model.pt"
    before = md5(weights)
    params = {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "pretrained": False}
    status, detail = _http_error("POST", f"{srv['url']}/train/resunet_brats?run_sync=true", params)
    assert status == 409 and "one labelled study cannot be both trained on and held out" in detail, detail
    assert "Label another study" in detail and "val_split 0" in detail and md5(weights) == before
    params["val_split"] = 0
    result = json.loads(_post_json(f"{srv['url']}/train/resunet_brats?run_sync=true", params))

    validation = result["validation"]
    assert validation["mode"] == "training_studies" and validation["validation_cases"] == [image], result
    assert validation["training_cases"] == [image] and "validating on the training studies" in validation["note"]
    key = result["metric"]
    regions = label_regions(label)
    assert regions, "the served prediction holds no tumour region"
    for region in regions:  # the served weights scored against their own prediction: the same label map
        assert result["served_before"][f"val_dice_{region}"] >= 0.99, (region, result)
    assert result["decision"] == "kept" and result["new"][key] < result["served_before"][key], result
    assert md5(weights) == before
    assert (srv["root"] / "models" / "monailabel_runs").is_dir()
    assert os.path.isfile(os.path.join(result["run_dir"], "model.pt"))  # the rejected weights, for inspection
    assert _train_status(srv)["status"] == "DONE"

    task = json.loads(_post_json(f"{srv['url']}/train/resunet_brats", params))
    assert task["status"] in ("SUBMITTED", "RUNNING"), task
    deadline = time.monotonic() + 900
    while (status := _train_status(srv))["status"] in ("SUBMITTED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(5)
    assert status["id"] == task["id"] and status["status"] == "DONE", status
    assert any("Retraining result: kept" in line for line in status["details"]), status


@pytest.fixture(scope="module")
def real_server(venv_dir, bundle_copy, tmp_path_factory):
    """A server on a copy of the bundle serving the shipped weights, over the two shared real cases imported with
    their references (``import_studies``)."""
    if not UPENN_CASE.is_dir():
        pytest.skip(f"{UPENN_CASE} is not here (the second shared real case lives outside the repository)")
    source, _ = bundle_copy
    root = tmp_path_factory.mktemp("bundle_real")
    for part in ("configs", "scripts"):
        shutil.copytree(source / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models").mkdir()
    shutil.copyfile(ROOT / "models" / "model.pt", root / "models" / "model.pt")
    studies = tmp_path_factory.mktemp("studies_real")
    upenn = tmp_path_factory.mktemp("upenn_source")
    (upenn / UPENN_CASE.name).symlink_to(UPENN_CASE)
    for folder in (ROOT / "examples", upenn):
        proc = _import(folder, studies)
        assert proc.returncode == 0, proc.stderr[-3000:]
    log_path = tmp_path_factory.mktemp("server_real") / "server.log"
    conf = [("bundle_path", str(root)), ("preload", "false"), ("models", "resunet_brats")]
    with serving(venv_dir, studies, conf, log_path) as (url, info):
        yield {"url": url, "info": info, "root": root, "studies": studies, "log": log_path}


def test_a_corrected_real_case_is_learned_and_the_other_real_case_is_not_made_worse(real_server):
    """Both shared real cases are studies; case A's reference is saved as the clinician's correction and the
    served (shipped) weights are fine-tuned on it with the bundle's recipe. The gate scores both weights on case B,
    which neither was trained on, and B's segmentation served afterwards is not worse than before."""
    srv = real_server
    a, b = REAL_CASE, UPENN_CASE.name
    labels = srv["studies"] / "labels" / "final"
    ref_a, ref_b = nib.load(labels / f"{a}.nii.gz"), nib.load(labels / f"{b}.nii.gz")
    before = region_dice(_infer(srv, "resunet_brats", b), ref_b)
    _save_label(srv, a, np.asarray(ref_a.dataobj), ref_a.affine)  # the correction of case A
    weights = srv["root"] / "models" / "model.pt"
    served_md5 = md5(weights)
    params = {"device": "cpu", "multi_gpu": False, "max_epochs": 1}
    result = json.loads(_post_json(f"{srv['url']}/train/resunet_brats?run_sync=true", params))

    validation, key = result["validation"], result["metric"]
    assert validation["training_cases"] == [a] and validation["validation_cases"] == [b], result
    candidate = srv["root"] / "models" / "monailabel_runs" / os.path.basename(result["run_dir"]) / "model.pt"
    candidate_md5 = md5(candidate)
    state, start = (
        torch.load(p, map_location="cpu", weights_only=True) for p in (candidate, ROOT / "models" / "model.pt")
    )
    assert state.keys() == start.keys() and any(not torch.equal(state[k], start[k]) for k in state)  # fine-tuned
    after = region_dice(_infer(srv, "resunet_brats", b), ref_b)
    if result["decision"] == "replaced":
        assert result["new"][key] >= result["served_before"][key] and md5(weights) == candidate_md5, result
    else:
        assert result["new"][key] < result["served_before"][key] and md5(weights) == served_md5, result
        assert after == before  # the same weights segment B as before
    print(f"B ({b}) Dice before {before}, after {after}; decision {result['decision']}: {result['reason']}")
    assert np.mean(list(after.values())) >= np.mean(list(before.values())), (before, after, result)


def _import(source, datastore, *args):
    cmd = [sys.executable, "-m", "scripts.data.import_studies", str(source), "--output_dir", str(datastore), "--quiet"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _brats2023_case(case, folder, name):
    """A BraTS 2023-named copy of a BraTS 2020 case (``-t1n/-t1c/-t2w/-t2f/-seg``, enhancing 4 -> 3)."""
    folder.mkdir(parents=True)
    for mod, suffix in zip(("t1", "t1ce", "t2", "flair"), ("t1n", "t1c", "t2w", "t2f")):
        shutil.copyfile(case[mod], folder / f"{name}-{suffix}.nii.gz")
    seg = nib.load(case["seg"])
    data = np.asarray(seg.dataobj).copy()
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data.astype(np.uint8), seg.affine), folder / f"{name}-seg.nii.gz")


def test_real_layout_cases_are_imported_and_served(venv_dir, bundle_copy, tmp_path):
    """``python -m scripts.data.import_studies`` on BraTS 2020 and BraTS 2023 layouts and DICOM series: 4D studies
    in the bundle's channel order on the cases' grids, labels in the served values (1, 2, 4); a bad case is one
    error line naming the case and file while the other cases are imported; a real server lists the studies
    (the labelled ones with a final label) and segments the DICOM-imported study on its grid."""
    from scripts.data.dicom import nifti_case_to_dicom

    root, _ = bundle_copy
    src, datastore = tmp_path / "source", tmp_path / "datastore"
    brats2020 = write_dataset(src / "brats2020", num_cases=2, seed=21, shape=SHAPE, progress=False)
    other = write_dataset(tmp_path / "other", num_cases=3, seed=22, shape=SHAPE, progress=False)
    _brats2023_case(other[0], src / "brats2023" / "BraTS-GLI-00001-000", "BraTS-GLI-00001-000")
    nifti_case_to_dicom([other[1][m] for m in ("t1", "t1ce", "t2", "flair")], src / "dicom" / "case_dcm")
    bad = write_dataset(src / "bad", num_cases=2, seed=23, shape=SHAPE, progress=False)
    t2 = nib.load(bad[1]["t2"])
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[:-2], t2.affine), bad[1]["t2"])  # two slices short

    for source in ("brats2020", "brats2023", "dicom"):
        proc = _import(src / source, datastore)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _import(src / "bad", tmp_path / "datastore_bad")  # its case ids are the brats2020 source's
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    assert "BraTS20_Training_002" in errors[0] and bad[1]["t2"] in errors[0] and "shape" in errors[0], errors
    assert "1 studies written" in proc.stdout, proc.stdout

    study = nib.load(datastore / "BraTS20_Training_001.nii.gz")
    expected = np.stack([np.asarray(nib.load(brats2020[0][m]).dataobj) for m in ("t1", "t1ce", "t2", "flair")], -1)
    np.testing.assert_array_equal(np.asarray(study.dataobj), expected)
    np.testing.assert_allclose(study.affine, nib.load(brats2020[0]["t1"]).affine, atol=1e-5)
    label = np.asarray(nib.load(datastore / "labels" / "final" / "BraTS-GLI-00001-000.nii.gz").dataobj)
    np.testing.assert_array_equal(label, np.asarray(nib.load(other[0]["seg"]).dataobj))  # 3 -> 4 again
    assert not (datastore / "labels" / "final" / "case_dcm.nii.gz").exists()  # DICOM cases carry no label
    assert sorted(p.name for p in datastore.glob("*.nii.gz")) == [
        "BraTS-GLI-00001-000.nii.gz",
        "BraTS20_Training_001.nii.gz",
        "BraTS20_Training_002.nii.gz",
        "case_dcm.nii.gz",
    ]
    assert not list(datastore.rglob(".*.tmp*"))

    conf = [("bundle_path", str(root)), ("preload", "false"), ("models", "resunet_brats"), ("skip_trainers", "true")]
    with serving(venv_dir, datastore, conf, tmp_path / "server.log") as (url, _):
        objects = json.loads(request("GET", f"{url}/datastore/?output=all"))["objects"]
        labelled = sorted(k for k, v in objects.items() if v.get("labels", {}).get("final"))
        assert sorted(objects) == ["BraTS-GLI-00001-000", "BraTS20_Training_001", "BraTS20_Training_002", "case_dcm"]
        assert labelled == ["BraTS-GLI-00001-000", "BraTS20_Training_001", "BraTS20_Training_002"]
        srv = {"url": url, "studies": datastore}
        pred = _infer(srv, "resunet_brats", "case_dcm")
    dcm_study = nib.load(datastore / "case_dcm.nii.gz")
    assert dcm_study.shape[3] == 4 and pred.shape == dcm_study.shape[:3]
    np.testing.assert_allclose(pred.affine, dcm_study.affine, atol=1e-4)
    # the DICOM round trip keeps the NIfTI's intensities and world position (the centre of the T1's brain)
    source_t1 = nib.load(other[1]["t1"])
    t1, src_t1 = np.asarray(dcm_study.dataobj)[..., 0], np.asarray(source_t1.dataobj)
    assert np.array_equal(np.sort(t1, axis=None), np.sort(src_t1, axis=None))

    def centre(data, affine):
        return nib.affines.apply_affine(affine, np.argwhere(data > 0).mean(axis=0))

    np.testing.assert_allclose(centre(t1, dcm_study.affine), centre(src_t1, source_t1.affine), atol=0.5)
