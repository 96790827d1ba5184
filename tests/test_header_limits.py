"""A NIfTI header that announces more voxels than ``scripts.data.checks.MAX_VOXELS`` (a decompression bomb, a
crafted or corrupt header) is one clear error naming the case and file, raised before any data are read."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from scripts.conventions import MODALITIES
from scripts.data.checks import MAX_VOXELS, check_case
from scripts.io import write_nifti


def _crafted(path, shape):
    """A real NIfTI-1 header announcing ``shape`` int16 voxels, followed by 1 KiB of data only."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_data_offset(352)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + b"\0" * 1024)  # 348-byte header, extension flag, data
    return path


def test_a_header_announcing_too_many_voxels_is_refused_before_reading(tmp_path):
    case = tmp_path / "BraTS20_Training_001"
    case.mkdir()
    files = [write_nifti(np.ones((8, 8, 8)), case / f"{case.name}_{m}.nii.gz", np.int16) for m in MODALITIES]
    files[2] = str(_crafted(case / f"{case.name}_t2.nii.gz", (4096, 4096, 2048)))
    assert 4096 * 4096 * 2048 > MAX_VOXELS
    with pytest.raises(ValueError) as e:
        check_case({"image": files}, label_key=None)
    assert str(e.value).count("\n") == 0
    assert f"BraTS20_Training_001: {files[2]}: the header announces 34359738368 voxels" in str(e.value)
    assert "shape (4096, 4096, 2048)" in str(e.value) and "before reading the data" in str(e.value)


def test_a_large_but_sane_header_is_not_refused(tmp_path):
    """512^3 voxels exactly is allowed: the error is then about the missing data, not the size."""
    path = _crafted(tmp_path / "big.nii.gz", (512, 512, 512))
    with pytest.raises(ValueError, match="truncated"):
        check_case({"image": str(path)}, label_key=None, channels=1)
