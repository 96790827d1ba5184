"""``python -m scripts.data.mixed``: the datalist that adds a new generator version's cases to a dataset."""

import json
import subprocess
import sys

from tests._bundle import ROOT
from tests._inputs import write_case


def _dataset(root, prefix, n, arrays):
    for i in range(n):
        write_case(root, f"{prefix}_{i:04d}", arrays)
    return root


def test_every_new_case_and_as_many_old_ones_with_both_held_out_folds(tmp_path, arrays):
    base = _dataset(tmp_path / "base", "SynthGlioma", 8, arrays)
    new = _dataset(tmp_path / "new", "SynthGlioma11", 4, arrays)
    out = tmp_path / "out" / "datalist.json"
    args = ["--base", str(base), "--base_folds", "4", "--new", str(new), "--new_folds", "2", "--output", str(out)]
    run = subprocess.run([sys.executable, "-m", "scripts.data.mixed", *args], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    datalist = json.loads(out.read_text())
    ids = {k: [e["case_id"] for e in v] for k, v in datalist.items()}
    assert sum(i.startswith("SynthGlioma11_") for i in ids["training"]) == 2  # new fold 1 of 2
    assert sum(not i.startswith("SynthGlioma11_") for i in ids["training"]) == 2  # as many of base's 6
    assert sorted(i.split("_")[0] for i in ids["validation"]) == ["SynthGlioma"] * 2 + ["SynthGlioma11"] * 2
    assert not set(ids["training"]) & set(ids["validation"])
    for entry in datalist["training"] + datalist["validation"]:
        assert all((ROOT / p).is_absolute() and (ROOT / p).exists() for p in entry["image"])


def test_the_same_case_ids_in_both_datasets_are_one_error(tmp_path, arrays):
    base = _dataset(tmp_path / "base", "SynthGlioma", 4, arrays)
    new = _dataset(tmp_path / "new", "SynthGlioma", 4, arrays)
    out = tmp_path / "datalist.json"
    args = ["--base", str(base), "--base_folds", "2", "--new", str(new), "--new_folds", "2", "--output", str(out)]
    run = subprocess.run([sys.executable, "-m", "scripts.data.mixed", *args], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and not out.exists()
    assert run.stderr.startswith("error: SynthGlioma_000") and "duplicate case id" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
