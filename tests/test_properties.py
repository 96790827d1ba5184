"""Property-based (hypothesis), issue 27: whatever overrides, case names and small volumes a workflow is fed, it
never ends in a traceback, never loses or changes an input file (md5 before and after) and never writes a file
outside its output folder.

Real NIfTI files. Inference runs in-process (``monai.bundle.run`` after the command line's override checks,
``scripts.options.check_overrides``, as ``python -m monai.bundle run`` does) and ``scripts.data.import_studies``
through its ``main``; one real ``python -m monai.bundle run`` subprocess checks the same on stderr. Tiny network
settings (``tests._bundle.TINY_NETWORK``), few examples: the file runs in about a minute on two cores.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fire.parser
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.bundle import run as bundle_run

from scripts.conventions import MODALITIES
from scripts.data import import_studies
from scripts.options import case_error_of, check_overrides
from tests._bundle import ROOT, TINY_NETWORK
from tests._inputs import checksums

META = str(ROOT / "configs" / "metadata.json")
INFERENCE = [str(ROOT / "configs" / "inference.json")]
EXAMPLES = settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
OVERRIDES = {
    "tta": ["true", "false", "False", "YES", "0", "maybe"],
    "overlap": ["0", "0.25", "0.9", "1.0", "-1", "abc"],
    "window_size": ["[32,32,32]", "[16,16,16]", "[36,36,36]", "[0,32,32]", "32"],
    "brats_labels": ["[1,2,4]", "[1,2,3]", "[1,2,2]", "[1,2]", "[0,1,2]"],
    "min_piece_fraction": ["0", "0.1", "2", "-1"],
    "layout": ["auto", "brats2020", "msd", "nonsense"],
    "ttaa": ["true"],
    "overlapp": ["0.9"],
    "allow_missing_modalities": ["true", "false", "perhaps"],
}
"""Override ids (two misspelt) and values as typed on the command line, good and bad."""
NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/\\")


def _changed_outside(before: dict, after: dict, output_dir: str) -> list[str]:
    """Files written or changed outside ``output_dir`` (:func:`checksums` paths; lost ones are checked apart)."""
    return [p for p, digest in after.items() if before.get(p) != digest and not Path(p).is_relative_to(output_dir)]


def _check_inputs_and_outputs(work: Path, before: dict, output_dir: str) -> None:
    """Every file of ``before`` is still there unchanged, and nothing was written outside ``output_dir``."""
    after = checksums(work)
    assert {p: d for p, d in after.items() if p in before} == before, "an input was lost or changed"
    assert not _changed_outside(before, after, output_dir), _changed_outside(before, after, output_dir)


case_names = st.text(NAME_CHARS, min_size=1, max_size=24).filter(
    lambda s: s.strip() == s and s not in (".", "..") and len(s.encode()) <= 60
)
overrides = st.lists(st.sampled_from(sorted(OVERRIDES)), unique=True, max_size=3).flatmap(
    lambda ids: st.fixed_dictionaries({k: st.sampled_from(OVERRIDES[k]) for k in ids})
)


@st.composite
def volumes(draw):
    """A small four-sequence volume (int16, some blank or constant sequences) and its BraTS label map."""
    shape = tuple(draw(st.integers(6, 20)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    images = {m: rng.integers(0, 400, shape).astype(np.int16) for m in MODALITIES}
    for m in draw(st.lists(st.sampled_from(MODALITIES), unique=True, max_size=1)):
        images[m][:] = draw(st.sampled_from([0, 1]))
    seg = rng.choice(np.array([0, 0, 0, 1, 2, 4], np.uint8), shape)
    return images, seg


def _write_case(root: Path, name: str, images: dict, seg: np.ndarray) -> None:
    """A BraTS 2020-style case folder ``root/<name>/<name>_<modality>.nii.gz`` plus ``<name>_seg.nii.gz``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, data in {**images, "seg": seg}.items():
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / f"{name}_{key}.nii.gz"))


def _one_line_outcome(call) -> object:
    """Run ``call``; its return value, or the code of a ``SystemExit`` whose message is one line. Any other error
    fails the test unless it comes from a ``CaseError`` (which the bundle's excepthook prints as one line)."""
    try:
        return call()
    except SystemExit as e:
        assert e.code in (None, 0, 1) or (isinstance(e.code, str) and "\n" not in e.code.strip()), e.code
        return e.code
    except Exception as e:  # anything else would be a traceback on the command line
        if case_error_of(e) is None:
            raise
        return str(case_error_of(e))


WORKFLOWS = {
    "run": INFERENCE,
    "evaluating": [*INFERENCE, str(ROOT / "configs" / "evaluate.json")],
    "report": [*INFERENCE, str(ROOT / "configs" / "report.json")],
    "robustness": [*INFERENCE, str(ROOT / "configs" / "robustness.json")],
}
"""Run id -> the config files of each per-case workflow."""


def _workflow_in_process(
    work: Path, dataset: Path, output: Path, checkpoint: Path, typed: dict, run_id: str = "run"
) -> object:
    """The workflow ``run_id`` as ``python -m monai.bundle run <run_id>`` runs it with ``typed`` overrides (values
    parsed as Fire parses the command line)."""
    configs = WORKFLOWS[run_id]
    flags = dict(zip(TINY_NETWORK[::2], TINY_NETWORK[1::2]))
    flags.update({f"--{k}": v for k, v in typed.items()})
    flags.update({"--inference_backend": "torch", "--ckpt_path": str(checkpoint), "--bundle_root": str(work)})
    flags.update({"--dataset_dir": str(dataset), "--output_dir": str(output)})
    values = {k[2:]: fire.parser.DefaultParseValue(v) for k, v in flags.items()}
    if run_id == "evaluating":
        values["num_folds"] = 2  # two cases: one validation fold

    def call():
        check_overrides(configs, META, values)
        bundle_run(run_id=run_id, meta_file=META, config_file=configs, **values)

    return _one_line_outcome(call)


@EXAMPLES
@given(names=st.lists(case_names, min_size=1, max_size=2, unique_by=str.casefold), data=volumes(), typed=overrides)
def test_inference_never_tracebacks_loses_an_input_or_writes_outside_its_folder(checkpoint, names, data, typed):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, output = work / "data", work / "data" / "out"  # the output folder inside the dataset folder
        for name in names:
            _write_case(dataset, name, *data)
        before = checksums(work)
        _workflow_in_process(work, dataset, output, checkpoint, typed)
        _check_inputs_and_outputs(work, before, "data/out")


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(names=st.lists(case_names, min_size=2, max_size=2, unique_by=str.casefold), data=volumes(), typed=overrides)
@pytest.mark.parametrize("run_id", ["evaluating", "report", "robustness"])
def test_case_workflows_never_traceback_lose_an_input_or_write_outside_their_folder(
    checkpoint, run_id, names, data, typed
):
    """Evaluation, the report and the robustness study, fed the same (fewer examples: each runs many passes)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, output = work / "data", work / "data" / "out"
        for name in names:
            _write_case(dataset, name, *data)
        before = checksums(work)
        _workflow_in_process(work, dataset, output, checkpoint, typed, run_id)
        _check_inputs_and_outputs(work, before, "data/out")


@EXAMPLES
@given(names=st.lists(case_names, min_size=1, max_size=3, unique_by=str.casefold), data=volumes())
def test_import_studies_never_tracebacks_loses_an_input_or_writes_outside_its_folder(names, data):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, output = work / "data", work / "datastore"
        for name in names:
            _write_case(dataset, name, *data)
        before = checksums(work)
        _one_line_outcome(lambda: import_studies.main([str(dataset), "--output_dir", str(output), "--quiet"]))
        _check_inputs_and_outputs(work, before, "datastore")


@pytest.mark.parametrize("name, typed", [("Ünïcode case (2)", {"tta": "false", "overlap": "0.25"})])
def test_a_real_run_with_an_odd_name_is_one_line_or_a_result(checkpoint, tmp_path, name, typed):
    """The same properties through ``python -m monai.bundle run`` (stderr: no traceback)."""
    dataset, output = tmp_path / "data", tmp_path / "out"
    rng = np.random.default_rng(0)
    images = {m: rng.integers(0, 400, (16, 16, 12)).astype(np.int16) for m in MODALITIES}
    _write_case(dataset, name, images, np.zeros((16, 16, 12), np.uint8))
    before = checksums(tmp_path)
    args = [part for k, v in typed.items() for part in (f"--{k}", v)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", META, "--config_file", str(INFERENCE)]
    cmd += [*TINY_NETWORK, *args, "--inference_backend", "torch", "--ckpt_path", str(checkpoint)]
    cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(dataset), "--output_dir", str(output)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    _check_inputs_and_outputs(tmp_path, before, "out")
    assert sorted(p.name for p in output.iterdir()) == [f"{name}.nii.gz"]
