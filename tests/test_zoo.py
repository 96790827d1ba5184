"""The model zoo's ``ci/verify_bundle.py`` checks (full mode), on a copy of the bundle, offline (issue 28).

As the verifier runs them: the directory (necessary and preferred files), the large files (each entry's
``url`` goes to ``monai.apps.download_url`` with its hash, which skips the download because the file is present
with that hash: nothing is downloaded here, the network is not reached), the version and changelog, the
metadata, ``verify_net_in_out`` and ``ckpt_export`` on ``configs/inference.json`` alone, and the inference
workflow's properties after ``initialize`` with no data (``data/synthetic`` does not exist in a clone): the data
are checked when the workflow runs.
"""

import json
import os
import re
import urllib.request
from pathlib import Path

import monai.apps.utils
import pytest
import torch
from monai.apps import download_url
from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties

from tests._bundle import ROOT, copy_bundle, large_files

NECESSARY = ("configs/metadata.json", "LICENSE")
PREFERRED = ("models/model.pt", "configs/inference.json")
SCHEMA_CACHE = os.environ.get("MONAI_META_SCHEMA")
"""A local copy of the metadata schema (``verify_metadata`` downloads it otherwise; the tests never do)."""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The bundle as the zoo holds it: ``models/<name>/``, no data, no run folders."""
    return copy_bundle(tmp_path_factory.mktemp("zoo") / "resunet_brats_segmentation")


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_directory_and_large_files(bundle, offline):
    for name in NECESSARY + PREFERRED:
        assert (bundle / name).is_file(), name
    entries = large_files(bundle)
    assert {e["path"] for e in entries} >= {"models/model.pt", "models/model.ts"}
    for entry in entries:  # the zoo's download_large_files: download_url(fuzzy=True, filepath=..., **entry)
        assert entry["url"].startswith("https://") and entry["hash_type"] == "md5" and entry["hash_val"], entry
        args = {k: v for k, v in entry.items() if k != "path"}
        download_url(**args, fuzzy=True, filepath=str(bundle / entry["path"]))  # present, right hash: skipped
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "required_packages_version" in meta and "optional_packages_version" not in meta
    assert re.search(r'^version = "(.+?)"', (ROOT / "pyproject.toml").read_text(), re.M)[1] == meta["version"]


@pytest.mark.skipif(not SCHEMA_CACHE, reason="the metadata schema is downloaded by verify_metadata; set "
                    "MONAI_META_SCHEMA to a local copy of it to run this check offline")  # fmt: skip
def test_verify_metadata(bundle, offline):
    schema = bundle / "eval" / "schema.json"
    schema.parent.mkdir(exist_ok=True)
    schema.write_bytes(Path(SCHEMA_CACHE).read_bytes())
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))


def test_net_in_out_and_ckpt_export_on_inference_json_alone(bundle):
    meta, config = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(bundle))
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models" / "verify_model.ts"),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=meta,
        config_file=config,
        bundle_root=str(bundle),
    )
    torch.jit.load(str(bundle / "models" / "verify_model.ts"))
    torch.jit.load(str(bundle / "models" / "model.ts"))


def test_inference_workflow_properties_without_data(bundle, monkeypatch):
    monkeypatch.chdir(bundle.parent)
    assert not (bundle / "data").exists()
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(bundle),
        config_file=str(bundle / "configs" / "inference.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        meta_file=str(bundle / "configs" / "metadata.json"),
    )
    workflow.properties = {**MetaProperties, **InferProperties}
    assert workflow.check_properties() == []
    with pytest.raises(SystemExit, match=r"^error: .*data/synthetic: input does not exist \(check --dataset_dir\)$"):
        workflow.run()  # the data are checked when the workflow runs
    assert not (bundle / "data").exists() and not (bundle / "eval").exists()  # nothing written
