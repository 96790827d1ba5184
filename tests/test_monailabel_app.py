"""The MONAI Label pieces that need no server: the datastore writer, the server environment's bookkeeping, the
launch command and the overlay rendering (the server itself: tests/test_monailabel_server.py)."""

import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from apps import render_overlay, server
from apps.resunet_brats.lib import versions
from apps.resunet_brats.lib.models import MODELS, missing_files
from apps.resunet_brats.lib.retraining import TrainingRequestError, case_id, evaluate, split_validation
from scripts.casework import CheckpointError, parse_configs
from scripts.synthetic.phantom import generate_case, write_monailabel_datastore
from tests._bundle import ROOT

SHAPE = (40, 48, 32)


def test_datastore_holds_4d_studies_in_bundle_channel_order_and_final_labels(tmp_path):
    files = write_monailabel_datastore(tmp_path, num_cases=3, num_labelled=1, seed=2, shape=SHAPE, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == [f"BraTS20_Training_00{i}.nii.gz" for i in (1, 2, 3)]
    assert [p.name for p in (tmp_path / "labels" / "final").iterdir()] == ["BraTS20_Training_001.nii.gz"]
    assert "label" in files[0] and "label" not in files[1]
    study = nib.load(files[0]["image"])
    case = generate_case(1, seed=2, shape=SHAPE)
    assert study.shape == (*SHAPE, 4) and study.get_data_dtype() == np.int16
    for i, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        np.testing.assert_array_equal(np.asarray(study.dataobj)[..., i], case[modality].astype(np.int16))
    np.testing.assert_array_equal(np.asarray(nib.load(files[0]["label"]).dataobj), case["seg"])
    assert not list(tmp_path.rglob("*.tmp*")), "temporary files left behind"


def test_server_environment_is_reused_only_while_the_pinned_files_are_unchanged(tmp_path, monkeypatch):
    venv_dir = tmp_path / "venv"
    (venv_dir / "bin").mkdir(parents=True)
    (venv_dir / "bin" / "python").touch()
    assert not server.is_ready(venv_dir)  # no stamp: a half-made environment
    (venv_dir / server.STAMP).write_text(server.requirements_digest() + "\n")
    assert server.is_ready(venv_dir)
    edited = tmp_path / "requirements-server.txt"
    edited.write_text(server.REQUIREMENTS.read_text() + "extra-package==1.0\n")
    monkeypatch.setattr(server, "PINNED_FILES", (edited, *server.PINNED_FILES[1:]))
    assert not server.is_ready(venv_dir)


def test_the_server_environment_gets_this_checkout_by_an_editable_install_once(tmp_path, monkeypatch):
    venv_dir = tmp_path / "venv"
    (venv_dir / "bin").mkdir(parents=True)
    (venv_dir / "bin" / "python").touch()
    (venv_dir / server.STAMP).write_text(server.requirements_digest() + "\n")  # the pinned packages are there
    commands = []
    monkeypatch.setattr(server, "_check", lambda cmd, *args, **kwargs: commands.append(cmd))
    assert server.setup(venv_dir) == venv_dir and server.has_bundle(venv_dir)
    assert commands[0][-3:] == ["--no-deps", "-e", str(ROOT)] and "-r" not in commands[0]
    assert "import os, scripts" in commands[1][-1]  # then checked: scripts is this checkout's
    commands.clear()
    server.setup(venv_dir)
    assert commands == []  # installed: reused
    (venv_dir / server.BUNDLE_STAMP).write_text(f"/another/checkout\n{server.bundle_stamp().split()[1]}\n")
    server.setup(venv_dir)
    assert commands[0][-3:] == ["--no-deps", "-e", str(ROOT)]  # another checkout was installed: this one is


def test_the_app_imports_in_the_server_environment_without_path_edits(venv_dir, tmp_path):
    """In the server environment (another folder, no PYTHONPATH) ``scripts`` is this checkout's and the app's
    modules that use it import as they are."""
    code = (
        "import scripts, apps.resunet_brats.lib.dicomweb, apps.resunet_brats.lib.bundle_tasks, "
        "apps.resunet_brats.lib.versions; print(scripts.__file__)"
    )
    python = str(server.bin_dir(venv_dir) / "python")
    proc = subprocess.run(
        [python, "-c", code], cwd=tmp_path, env=server.server_env(venv_dir), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == str(ROOT / "scripts" / "__init__.py")


def test_server_command_serves_this_bundle_on_loopback_with_the_server_environment_first_on_path(tmp_path):
    cmd = server.server_command(tmp_path, "/data/studies", "127.0.0.1", 8123, [("models", "resunet_brats")])
    assert cmd[:2] == [str(tmp_path / "bin" / "monailabel"), "start_server"]
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert args["--app"] == str(ROOT / "apps" / "resunet_brats") and args["--studies"] == "/data/studies"
    assert args["--host"] == "127.0.0.1" and args["--port"] == "8123"
    assert cmd[-6:] == ["--conf", "bundle_path", str(ROOT), "--conf", "models", "resunet_brats"]
    env = server.server_env(tmp_path)
    assert env["PATH"].split(":")[0] == str(tmp_path / "bin") and "PYTHONPATH" not in env


def test_every_served_model_has_its_configs_in_the_bundle():
    assert {name: missing_files(ROOT, m) for name, m in MODELS.items()} == {name: [] for name in MODELS}


def test_models_beside_each_other_keep_separate_versions_and_checkpoint_folders(tmp_path):
    """The student's weights (models/student.pt) sit beside the ResUNet's (models/model.pt): each keeps its own
    versions folder, each inference config loads its own weights file, and every train config writes its
    checkpoints outside the other's."""
    weights = {name: tmp_path / "models" / m.weights for name, m in MODELS.items()}
    folders = {name: versions.versions_dir(str(w)) for name, w in weights.items()}
    assert folders["resunet_brats"] == str(tmp_path / "models" / "versions")
    assert folders["resunet_brats_student"] == str(tmp_path / "models" / "versions_student")
    assert len(set(folders.values())) == len(MODELS)
    ckpt = {}
    for name, model in MODELS.items():
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / c) for c in model.infer_configs])
        parser["bundle_root"] = str(tmp_path)
        assert parser.get_parsed_content("ckpt_path") == f"{tmp_path}/models/{model.weights}"
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / c) for c in model.train_configs])
        parser["bundle_root"] = str(tmp_path)
        ckpt[name] = parser.get_parsed_content("ckpt_dir")
    assert len(set(ckpt.values())) == len(MODELS)


def test_retraining_validation_of_another_networks_weights_is_a_checkpoint_error(checkpoint):
    """The app scores weights with the bundle's one loader (``scripts.casework.load_weights``): weights that do not
    fit the configured network raise a one-line ``CheckpointError`` (the server answers; it does not exit)."""
    parser = parse_configs([str(ROOT / "configs" / "train.json")], {"bundle_root": str(ROOT)})
    with pytest.raises(
        CheckpointError, match=r"^checkpoint .* does not fit the configured ResUNet: .* of another shape"
    ):
        evaluate(parser, checkpoint, [], "cpu")


def test_retraining_gate_holds_out_only_studies_neither_weights_were_trained_on(tmp_path):
    """The gate compares the served and the new weights on studies neither was trained on: a study the served
    weights' line of descent trained on (recorded with the version) is never held out; with nothing left to hold
    out, the recipe's synthetic held-out cases validate, and without them the request is refused (409) with the
    remedies; val_split 0 asks for a fit on the training studies."""
    studies = [{"image": f"/d/s{i}.nii.gz", "label": f"/d/labels/final/s{i}.nii.gz"} for i in range(1, 5)]
    train, val, info = split_validation(studies, 0.2, "m", seen={"s4"})
    assert [case_id(c) for c in val] == ["s3"] and info["training_cases"] == ["s1", "s2", "s4"]
    assert info["mode"] == "held_out" and "trained on by the served weights" in info["note"]
    train, val, info = split_validation(studies[:1], 0.2, "m", synthetic="/b/data/synthetic_mni")
    assert val == [] and info["training_cases"] == ["s1"] and "synthetic_mni" in info["note"]
    for subset, seen, why in ((studies[:1], (), "one labelled study"), (studies[:2], {"s1", "s2"}, "all 2")):
        with pytest.raises(TrainingRequestError, match=why) as e:
            split_validation(subset, 0.2, "m", seen=seen)
        assert e.value.status == 409 and "val_split 0" in str(e.value) and "Label another study" in str(e.value)
    train, val, info = split_validation(studies[:1], 0.0, "m", seen={"s1"})
    assert train == val == studies[:1] and info["mode"] == "training_studies"

    served = tmp_path / "models" / "model.pt"
    served.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, served)
    assert versions.trained_on(str(served)) == []  # weights no retraining made (e.g. the shipped ones)
    candidate = tmp_path / "candidate.pt"
    torch.save({"w": torch.ones(1)}, candidate)
    versions.keep(str(candidate), str(served), 0.5, {"trained_on": ["s1", "s2"]})
    assert versions.trained_on(str(served)) == []  # kept, not served
    versions.serve(str(candidate), str(served))
    assert versions.trained_on(str(served)) == ["s1", "s2"]


def test_overlay_png_of_a_study_and_its_label(tmp_path):
    files = write_monailabel_datastore(tmp_path, num_cases=1, num_labelled=1, shape=SHAPE, progress=False)[0]
    png = render_overlay.main(
        ["--study", files["image"], "--label", files["label"], "--output", str(tmp_path / "o.png")]
    )
    assert open(png, "rb").read(4) == b"\x89PNG"
    with pytest.raises(SystemExit, match="does not match the study's grid"):
        render_overlay.main(
            [
                "--study",
                files["image"],
                "--label",
                str(_label_of_shape(tmp_path, (8, 8, 8))),
                "--output",
                str(tmp_path / "bad.png"),
            ]
        )


def _label_of_shape(folder, shape):
    path = folder / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), path)
    return path
