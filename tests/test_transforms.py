import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from scripts.transforms import (
    BrainHistogramEqualized,
    BrainNormalized,
    LabelToRegionsd,
    MaskOutsideBraind,
    NestRegionsd,
    RegionsToLabeld,
    label_to_regions,
    regions_to_label,
)
from tests._inputs import label_map


@pytest.mark.parametrize("labels", [(1, 2, 4), (1, 2, 3)])
def test_label_regions_round_trip_through_nifti(tmp_path, labels):
    lab = label_map(labels)
    path = tmp_path / "case_seg.nii.gz"
    nib.save(nib.Nifti1Image(lab[0].numpy(), np.eye(4)), path)
    loaded = LoadImaged("label", ensure_channel_first=True)({"label": str(path)})
    regions = LabelToRegionsd("label", labels=labels)(loaded)["label"]
    assert regions.shape == (3, 24, 24, 24)
    tc, wt, et = regions
    assert torch.equal(et.bool(), (lab[0] == labels[2]))
    assert torch.equal(tc.bool(), (lab[0] == labels[0]) | (lab[0] == labels[2]))
    assert torch.equal(wt.bool(), lab[0] > 0)
    back = RegionsToLabeld("pred", labels=labels)({"pred": regions})["pred"]
    assert back.dtype == torch.uint8 and back.shape == (1, 24, 24, 24)
    assert torch.equal(torch.as_tensor(back), lab)


def test_unexpected_label_values_name_the_file(tmp_path):
    lab = label_map()
    lab[0, 0, 0, 0] = 3
    path = tmp_path / "bad_seg.nii.gz"
    nib.save(nib.Nifti1Image(lab[0].numpy(), np.eye(4)), path)
    loaded = LoadImaged("label", ensure_channel_first=True)({"label": str(path)})
    with pytest.raises(ValueError, match=r"bad_seg\.nii\.gz.*\[3\]"):
        LabelToRegionsd("label")(loaded)


def test_regions_to_label_keeps_et_outside_tc():
    regions = torch.zeros(3, 4, 4, 4)
    regions[2, 0, 0, 0] = 1  # ET with no TC/WT around it still becomes enhancing
    regions[1, 1, 1, 1] = 1
    out = regions_to_label(regions)
    assert out[0, 0, 0, 0] == 4 and out[0, 1, 1, 1] == 2 and out.sum() == 6


def test_nested_regions_are_the_regions_of_the_written_label_map():
    """Validation nests the network's regions (NestRegionsd) as inference's label map has them: ET outside TC and
    TC outside WT; the label map of a prediction then scores exactly the nested regions."""
    gen = torch.Generator().manual_seed(0)
    regions = (torch.rand(3, 12, 12, 12, generator=gen) > 0.7).float()
    pred = MetaTensor(regions, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = NestRegionsd("pred")({"pred": pred})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == pred.dtype and torch.equal(out.affine, pred.affine)
    served = label_to_regions(regions_to_label(regions))
    assert torch.equal(out.as_tensor(), served) and not torch.equal(served, regions)
    tc, wt, et = out.bool()
    assert not (et & ~tc).any() and not (tc & ~wt).any()


def test_label_to_regions_rejects_multichannel():
    with pytest.raises(ValueError, match="single-channel"):
        label_to_regions(torch.zeros(2, 4, 4, 4))


def _brain_image():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(4, 32, 32, 32)
    img[:, 4:28, 4:28, 4:28] = torch.rand(4, 24, 24, 24, generator=g) * 1000 + 50
    return img


def test_brain_normalisation_and_equalisation_keep_background_zero():
    img = _brain_image()
    d = BrainNormalized("image")({"image": img})
    norm = d["image"]
    assert norm.min() >= 0 and norm.max() <= 1
    assert torch.all(norm[:, :4] == 0) and torch.all(norm[:, 28:] == 0)
    eq = BrainHistogramEqualized("image")(d)["image"]
    brain = eq[:, 4:28, 4:28, 4:28]
    assert torch.all(eq[:, :4] == 0) and eq.max() <= 1
    # equalised brain intensities are spread uniformly: quartiles near 0.25, 0.5, 0.75
    q = torch.quantile(brain[0].flatten(), torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(q, torch.tensor([0.25, 0.5, 0.75]), atol=0.03)
    # equalisation is monotonic: the intensity order inside the brain is kept
    flat_in, flat_out = norm[0, 4:28, 4:28, 4:28].flatten(), brain[0].flatten()
    order = torch.argsort(flat_in)
    assert torch.all(torch.diff(flat_out[order]) >= -1e-6)


def test_equalisation_strength_zero_is_identity():
    d = BrainNormalized("image")({"image": _brain_image()})
    out = BrainHistogramEqualized("image", strength=0.0)(dict(d))["image"]
    assert torch.allclose(out, d["image"])
    with pytest.raises(ValueError):
        BrainHistogramEqualized("image", strength=2.0)


def test_predictions_outside_the_brain_are_cleared():
    img = _brain_image()  # brain is [4:28]^3, background exactly 0
    pred = torch.ones(3, *img.shape[1:])
    out = MaskOutsideBraind("pred")({"pred": pred, "image": img})["pred"]
    assert out.shape == pred.shape
    assert torch.all(out[:, 4:28, 4:28, 4:28] == 1)
    assert out.sum() == 3 * 24**3
    # without a zero background nothing changes
    same = MaskOutsideBraind("pred")({"pred": pred, "image": img + 1})["pred"]
    assert torch.equal(same, pred)
    with pytest.raises(ValueError, match="differ"):
        MaskOutsideBraind("pred")({"pred": pred[:, :8], "image": img})
