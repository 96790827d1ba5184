"""Tests of the MNI152-based glioma generator (scripts/synthetic/) on real files."""

import nibabel as nib
import numpy as np
import pytest

from scripts.conventions import BRATS2020_LABELS, MODALITIES
from scripts.data.layouts import find_cases
from scripts.synthetic import anatomy, generator, intensity, tumour


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_mni")
    files = generator.write_dataset(str(out), num_cases=1, seed=0, first=2)
    return out, files[0]


def test_written_case_is_a_brats2020_case(written):
    out, files = written
    layout, cases = find_cases(out)
    assert layout == "brats2020" and len(cases) == 1 and cases[0]["case_id"] == "SynthGlioma_0002"
    seg = nib.load(files["seg"])
    assert seg.shape == anatomy.BRATS_SHAPE and nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, *BRATS2020_LABELS} and (labels > 0).sum() > 1000
    brain = None
    for mod in MODALITIES:
        img = nib.load(files[mod])
        assert img.get_data_dtype() == np.int16 and np.allclose(img.affine, seg.affine)
        data = np.asarray(img.dataobj)
        brain = data > 0 if brain is None else brain | (data > 0)
    assert brain[labels > 0].mean() > 0.99  # tumour inside the skull-stripped brain
    assert 0.8e6 < brain.sum() < 2.2e6  # brain volume in mm³ (mL x 1000): a human brain


def test_generation_is_deterministic(written):
    _, files = written
    again = generator.generate_case(2, seed=0)
    stored = np.asarray(nib.as_closest_canonical(nib.load(files["seg"])).dataobj)
    assert np.array_equal(again["seg"], stored)


def test_oedema_is_bright_on_flair_and_t2(written):
    _, files = written
    seg = np.asarray(nib.load(files["seg"]).dataobj)
    for mod in ("flair", "t2"):
        image = np.asarray(nib.load(files[mod]).dataobj).astype(float)
        assert image[seg == 2].mean() > image[(seg == 0) & (image > 0)].mean()


@pytest.mark.parametrize("seed", range(20))
def test_contrasts_respect_mri_physics(seed):
    c = intensity.sample_contrasts(np.random.default_rng(seed))
    assert c["t1"]["wm"] > c["t1"]["gm"] > c["t1"]["csf"] and c["t1"]["necrosis"] < c["t1"]["gm"]
    assert c["t1ce"]["enhancing"] > c["t1ce"]["wm"] and c["t1ce"]["vessel"] > c["t1ce"]["wm"]
    assert c["t2"]["csf"] > c["t2"]["gm"] > c["t2"]["wm"] and c["t2"]["oedema"] > c["t2"]["gm"]
    assert c["flair"]["csf"] < c["flair"]["wm"] and c["flair"]["oedema"] > c["flair"]["gm"]
    # the core and the oedema differ on every sequence in a fixed direction (generator 1.1)
    for t1 in ("t1", "t1ce"):
        assert c[t1]["necrosis"] <= c[t1]["net"] <= c[t1]["oedema"] < c[t1]["gm"]
    assert c["t2"]["net"] <= c["t2"]["oedema"] <= c["t2"]["necrosis"] <= c["t2"]["csf"]
    gap = c["flair"]["oedema"] - c["flair"]["gm"]
    assert c["flair"]["necrosis"] <= c["flair"]["gm"] + 0.5 * gap and c["flair"]["net"] <= c["flair"]["oedema"]


def test_fixed_contrast_ablation_is_the_midpoint():
    assert intensity.sample_contrasts(None) == intensity.sample_contrasts(None)


def test_tumour_volumes_follow_the_drawn_distribution():
    template = anatomy.load_template()
    rng = np.random.default_rng(0)
    volumes = []
    for _ in range(40):
        warp = anatomy.random_warp(rng, template, deform=False)
        spec = tumour.sample_tumour(rng, template, warp, warp.target_box(template))
        oedema = spec.wt_ml - spec.core_ml
        assert 2.0 <= spec.core_ml <= 90.0 and 2.0 <= oedema <= 150.0
        assert spec.kind in tumour.KINDS
        volumes.append((spec.core_ml, oedema))
    core, oedema = np.array(volumes).T
    assert core.min() < 6 and core.max() > 40  # log-uniform over 2-90 mL
    assert 0.7 <= (oedema >= 20).mean() <= 0.97 and (oedema > core).mean() > 0.5  # mostly more oedema than core


def test_tumours_grow_above_the_tentorium():
    """Adult gliomas are supratentorial: no tumour centre in the cerebellum or the brainstem (MNI mm)."""
    template = anatomy.load_template()
    assert 0.8 < template.supratentorial[template.brain > 0.5].mean() < 0.95
    rng = np.random.default_rng(1)
    for _ in range(20):
        centre = tumour._pick_centre(rng, template, core_radius=10.0)
        assert template.supratentorial[tuple(centre.astype(int))]


def test_without_nilearn_the_generator_is_one_error_line_and_writes_nothing(monkeypatch, tmp_path):
    """nilearn is an optional extra (requirements-synthetic.txt): without it the command says how to install it
    before writing anything, and the template loader raises the same message."""
    import sys

    real = generator.importlib.util.find_spec
    monkeypatch.setattr(generator.importlib.util, "find_spec", lambda m: None if m == "nilearn" else real(m))
    out = tmp_path / "gen"
    with pytest.raises(SystemExit, match=r"^error: .*pip install -c constraints.txt -r requirements-synthetic.txt$"):
        generator.main(["--output_dir", str(out), "--num_cases", "1"])
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "nilearn", None)  # import nilearn now fails
    anatomy.load_template.cache_clear()
    try:
        with pytest.raises(ImportError, match="requirements-synthetic.txt"):
            anatomy.load_template()
    finally:
        anatomy.load_template.cache_clear()
