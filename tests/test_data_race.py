"""A case is loaded with all its channels or reported, never as a 1-channel study (issue 13).

The multi-GPU run once loaded ``BraTS20_Training_020_t1.nii.gz`` as a whole case (``expected 4 channels of a 3D
image, got shape (1, ...)``). Real files in the states a listing can meet while a case is written (only its T1
file so far, in its folder or flat); the image reader shared by the cache threads; and a real 2-process run
(``torch.distributed.run``, gloo) that fills the default data folder: only rank 0 writes, and no rank lists
before the data are complete.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from scripts.data.checks import check_case
from scripts.data.layouts import detect_layout, find_inference_cases, prepare_datalist
from scripts.io import write_nifti
from scripts.synthetic.phantom import write_dataset
from scripts.transforms import LoadImageSharedGridd
from tests._bundle import ROOT

SHAPE = (24, 24, 24)


def _lone_t1(folder: Path, case_id: str) -> Path:
    """The first file of a case being written: its T1 image, nothing else yet."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(write_nifti(np.ones(SHAPE), folder / f"{case_id}_t1.nii.gz", np.int16))


def test_a_lone_t1_file_is_an_incomplete_case_not_a_4d_study(tmp_path):
    data = tmp_path / "flat"
    t1 = _lone_t1(data, "BraTS20_Training_020")
    assert detect_layout(data) == "brats2020"  # not nifti4d: a modality file is never a whole study
    with pytest.raises(SystemExit, match=r"error: case BraTS20_Training_020: missing modality file\(s\).*_t1ce"):
        prepare_datalist(data, num_folds=2, exit_on_error=True)
    (case,) = find_inference_cases(data, incomplete="keep")
    assert case["image"][0] == str(t1) and len(case["image"]) == 4
    with pytest.raises(ValueError, match=r"BraTS20_Training_020.*_t1ce\.nii\.gz"):
        check_case(case, label_key=None)


def test_a_case_folder_seen_mid_write_stops_training_with_one_line(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, num_cases=4, seed=1, shape=SHAPE, progress=False)
    _lone_t1(data / "BraTS20_Training_005", "BraTS20_Training_005")
    with pytest.raises(SystemExit, match=r"^error: case BraTS20_Training_005: missing modality file\(s\)"):
        prepare_datalist(data, num_folds=2, exit_on_error=True)


def test_a_case_seen_before_its_label_is_written_is_named_as_left_out(tmp_path, caplog):
    data = tmp_path / "data"
    write_dataset(data, num_cases=4, seed=1, shape=SHAPE, progress=False)
    (data / "BraTS20_Training_004" / "BraTS20_Training_004_seg.nii.gz").unlink()
    with caplog.at_level("WARNING"):
        datalist = prepare_datalist(data, num_folds=2)
    assert len(datalist["training"] + datalist["validation"]) == 3
    assert "1 case(s) without a segmentation left out (nothing to train or score against): BraTS20_Training_004" in (
        caplog.text
    )


def test_a_shared_image_reader_keeps_each_threads_files(tmp_path):
    """``CacheDataset(num_workers=2)`` runs one loader in two threads. Thread A reads a case's 4 files, thread B
    reads 1 file before A turns its images into data: A still gets 4 channels (MONAI's reader alone gives 1)."""
    files = [write_nifti(np.full(SHAPE, i + 1), tmp_path / f"c_{m}.nii.gz", np.int16) for i, m in enumerate("abcd")]
    reader = next(r for r in LoadImageSharedGridd("image")._loader.readers if "Nibabel" in type(r).__name__)
    images = reader.read(files)
    other = threading.Thread(target=reader.read, args=(files[3],))
    other.start()
    other.join()
    data, _ = reader.get_data(images)
    assert data.shape == (4, *SHAPE) and [int(data[c].max()) for c in range(4)] == [1, 2, 3, 4]


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
import scripts.io
from scripts.data.default_data import generate_default_data
from scripts.data.layouts import prepare_datalist

out, data = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
generate_default_data(data, data, num_cases=3, seed=0)  # train.json's initialize step
datalist = prepare_datalist(data, fold=0, num_folds=2)
record = {"written": sorted(scripts.io.WRITTEN), "datalist": datalist}
with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump(record, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_generate_the_default_data_once(tmp_path):
    """Both ranks ask for the missing default data folder: rank 0 writes it, rank 1 waits at the barrier and
    lists the same complete cases."""
    script, data = tmp_path / "rank.py", tmp_path / "synthetic"
    script.write_text(RANK_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), str(data)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0["written"]) == 15 and rank1["written"] == []  # 3 cases x 5 files, all by rank 0
    assert rank0["datalist"] == rank1["datalist"]
    items = rank1["datalist"]["training"] + rank1["datalist"]["validation"]
    assert len(items) == 3 and all(len(c["image"]) == 4 and c.get("label") for c in items)
