"""A small geometric phantom: deterministic synthetic, BraTS-2020-like multi-modal brain-tumour cases.

Fast enough for the tests and the quick-start data (``scripts.data.default_data.generate_default_data``, a step
of training's ``initialize``, fills the missing or empty default ``data/synthetic`` with these cases). Each case is a
skull-stripped "brain" (background exactly 0) with CSF (outer rim, sulci, interhemispheric fissure,
two lateral ventricles), a cortical grey-matter ribbon, deep grey nuclei and white matter, plus one
glioma-like tumour labelled with the BraTS 2020 convention:

* 1 - necrotic / non-enhancing tumour core (NCR/NET)
* 2 - peritumoral oedema (ED)
* 4 - enhancing tumour (ET)

Four modalities (T1, T1ce, T2, FLAIR) are rendered from the tissue map with MRI-like relative
contrasts, per-case random global scaling (int16 "scanner" values of a few hundred to a few
thousand), mild partial-volume smoothing, a smooth multiplicative bias field and Rician noise.

Everything is derived from ``np.random.default_rng([seed, index])``: the same ``(index, seed,
shape)`` always gives bit-identical arrays, a different index gives a different case. Generation
takes well under a second per case at the default shape on one CPU core: all smooth random fields
are built with separable Gaussian-kernel interpolation of a coarse random grid (three small matrix
products) and the tumour is rendered inside its bounding box only.

Arrays use the axis order (x, y, z) in RAS orientation with 1 mm isotropic voxels
(x: left -> right, y: posterior -> anterior, z: inferior -> superior).

Command line::

    python -m scripts.synthetic.phantom --output_dir data/synthetic --num_cases 30 --seed 0
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
from scipy import ndimage as ndi

from scripts.conventions import BRATS2020_LABELS, CLASS_COLOURS, LABEL_SUFFIX, MODALITIES, MODALITY_NAMES
from scripts.io import write_nifti

__all__ = [
    "CASE_PREFIX",
    "DEFAULT_SHAPE",
    "TISSUE_LABELS",
    "generate_case",
    "case_name",
    "case_files",
    "write_case",
    "write_dataset",
    "write_monailabel_datastore",
    "save_preview",
    "main",
]

CASE_PREFIX = "BraTS20_Training_"
DEFAULT_SHAPE = (112, 128, 96)

# internal tissue classes (returned as ``tissue`` when ``return_tissue=True``)
BG, CSF, GM, WM, DGM, VENT, NCR, ET, ED = range(9)
TISSUE_LABELS = {
    "background": BG,
    "csf": CSF,
    "grey_matter": GM,
    "white_matter": WM,
    "deep_grey": DGM,
    "ventricle": VENT,
    "necrosis": NCR,
    "enhancing": ET,
    "edema": ED,
}
_NCR_LABEL, _ED_LABEL, _ET_LABEL = BRATS2020_LABELS
_TISSUE_TO_SEG = np.array([0, 0, 0, 0, 0, 0, _NCR_LABEL, _ET_LABEL, _ED_LABEL], dtype=np.uint8)
"""BraTS 2020 label of each tissue class (index: ``TISSUE_LABELS`` value)."""

# Relative intensities per tissue class [BG, CSF, GM, WM, DGM, VENT, NCR, ET, ED] (white matter ~0.6-0.9).
_CONTRAST = {
    "t1": (0.0, 0.30, 0.60, 0.88, 0.76, 0.28, 0.34, 0.72, 0.64),
    "t1ce": (0.0, 0.32, 0.62, 0.86, 0.75, 0.30, 0.32, 1.60, 0.66),
    "t2": (0.0, 1.70, 0.92, 0.60, 0.74, 1.75, 1.45, 1.02, 1.28),
    "flair": (0.0, 0.18, 0.80, 0.60, 0.68, 0.15, 0.88, 1.05, 1.38),
}
_REF_SEMI_AXES = (0.5 * 0.85 * 112, 0.5 * 0.88 * 128, 0.5 * 0.88 * 96)  # brain semi-axes (mm) at the default shape
_INT16_MAX = 32767.0


# ----------------------------------------------------------------------------------------------
# smooth random fields
# ----------------------------------------------------------------------------------------------
def _interp_matrix(n_out: int, spacing: float) -> np.ndarray:
    """(n_out, n_ctrl) Gaussian-kernel interpolation weights, each row with unit L2 norm.

    With i.i.d. N(0, 1) control values the interpolated field is N(0, 1) at every voxel and has a
    correlation length of about ``spacing`` voxels.
    """
    spacing = float(max(spacing, 1.0))
    n_ctrl = int(np.ceil((n_out - 1) / spacing)) + 5
    ctrl = (np.arange(n_ctrl) - 0.5 * (n_ctrl - 1)) * spacing + 0.5 * (n_out - 1)
    pos = np.arange(n_out, dtype=np.float64)
    w = np.exp(-0.5 * ((pos[:, None] - ctrl[None, :]) / (0.8 * spacing)) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing) -> np.ndarray:
    """Unit-variance smooth 3D random field of ``shape`` (float32), correlation length ``spacing``."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    wx, wy, wz = (_interp_matrix(int(n), s) for n, s in zip(shape, sp))
    c = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1])).astype(np.float32)
    # numpy's own einsum loops (not BLAS): results do not depend on the number of BLAS threads
    t = np.einsum("abc,zc->abz", c, wz, optimize=False)
    t = np.einsum("abz,yb->ayz", t, wy, optimize=False)
    return np.einsum("ayz,xa->xyz", t, wx, optimize=False)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (rounded intersection of two distance-like fields)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _box(center: Sequence[float], radius: float, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    sl = []
    for c, n in zip(center, shape):
        lo = int(max(0, np.floor(c - radius)))
        hi = int(min(n, np.ceil(c + radius) + 1))
        sl.append(slice(lo, max(hi, lo + 1)))
    return tuple(sl)


# ----------------------------------------------------------------------------------------------
# case generation
# ----------------------------------------------------------------------------------------------
def generate_case(
    index: int, seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE, return_tissue: bool = False
) -> dict[str, np.ndarray]:
    """Generate one synthetic BraTS-like case.

    Args:
        index: case index (any int); different indices give different cases.
        seed: dataset seed; the generator is ``np.random.default_rng([seed, index])``.
        shape: volume shape (x, y, z), 1 mm voxels, RAS axis order.
        return_tissue: also return the internal tissue map (uint8, see ``TISSUE_LABELS``) as ``tissue``.

    Returns:
        dict with float32 ``t1``, ``t1ce``, ``t2``, ``flair`` (non-negative integer values that fit
        int16, exactly 0 outside the brain) and uint8 ``seg`` (labels 0, 1, 2, 4).

    The steps below draw from one generator in a fixed order, so their order is part of the output.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 ints >= 16, got {shape}")
    rng = np.random.default_rng([int(seed), int(index)])
    p = _anatomy_parameters(rng, shape)
    p.__dict__.update(vars(_tumour_parameters(rng, p.size)))
    p.__dict__.update(vars(_intensity_parameters(rng)))
    g = _brain_outline(rng, shape, p)
    tc = _place_tumour(p, g, shape)
    warp = _midline(rng, p, g, tc)
    tissue = _cortex(rng, p, g, warp.depth_med, shape)
    _deep_structures(p, g, warp, tissue)
    tissue[~g.mask] = BG
    tumour = _tumour(rng, p, g, tc, tissue, shape)
    out = _render_images(rng, p, g.mask, tissue, tumour, shape)
    out["seg"] = _TISSUE_TO_SEG[tissue]
    if return_tissue:
        out["tissue"] = tissue
    return out


def _anatomy_parameters(rng: np.random.Generator, shape: tuple[int, int, int]) -> SimpleNamespace:
    """Brain size and position, atrophy, cortex, gyri, ventricles and fissure of one case."""
    X, Y, Z = shape
    p = SimpleNamespace()
    p.ax = 0.5 * X * rng.uniform(0.82, 0.88)
    p.ay = 0.5 * Y * rng.uniform(0.85, 0.91)
    p.az = 0.5 * Z * rng.uniform(0.85, 0.91)
    p.size = float(np.cbrt(p.ax * p.ay * p.az / np.prod(_REF_SEMI_AXES)))  # 1.0 at the default shape
    p.cx = 0.5 * (X - 1) + rng.normal(0.0, 0.6)
    p.cy = 0.5 * (Y - 1) + rng.normal(0.0, 0.8)
    p.cz = 0.5 * (Z - 1) + 0.04 * p.az + rng.normal(0.0, 0.6)
    p.post_widen = rng.uniform(0.04, 0.10)  # occipital part wider than frontal
    p.floor_level = rng.uniform(0.8, 0.9)  # flattened base at cz - floor_level * az
    atrophy = rng.uniform(0.0, 1.0)  # wider CSF spaces / ventricles
    p.csf_w = 1.0 + 0.8 * atrophy  # outer CSF rim (mm)
    p.sulc_w = 0.55 + 0.45 * atrophy  # half width of sulci (mm)
    p.sulc_depth = rng.uniform(9.0, 14.0) * max(p.size, 0.6)
    p.gm_th = rng.uniform(2.0, 2.7)
    p.gyr_spacing = rng.uniform(0.07, 0.09)  # angular correlation length of the gyral pattern
    p.gyr_jitter = rng.uniform(0.045, 0.07)
    p.vent_scale = rng.uniform(0.75, 1.0) + 0.3 * atrophy
    p.vent_asym = rng.uniform(0.9, 1.1, size=2)
    p.vent_tilt = np.deg2rad(rng.uniform(20.0, 35.0))
    p.fis_w = rng.uniform(0.35, 0.6)
    return p


def _tumour_parameters(rng: np.random.Generator, size: float) -> SimpleNamespace:
    """Tumour side, radii, rim, oedema extent, shape harmonics, orientation, mass effect and placement draws."""
    t = SimpleNamespace()
    t.hemi = 1.0 if rng.random() < 0.5 else -1.0
    t.r_core = rng.uniform(8.0, 17.0) * size
    t.rim = rng.uniform(2.6, 4.2)  # voxels; kept >= ~2.5 voxels whatever the shape
    ed_ratio = rng.uniform(0.2, 0.7)  # oedema extent beyond the core / core radius
    t.ed_min = rng.uniform(1.5, 3.0)
    t.core_lump = rng.uniform(0.8, 2.0)
    t.finger_amp = rng.uniform(2.0, 4.5) * max(size, 0.5)
    t.core_pert_amp = rng.uniform(0.15, 0.32)
    t.ed_pert_amp = rng.uniform(0.10, 0.30)
    t.n_harm = 5
    t.harm_dirs = rng.standard_normal((2, t.n_harm, 3))
    t.harm_dirs /= np.linalg.norm(t.harm_dirs, axis=-1, keepdims=True)
    t.harm_freq = rng.uniform(1.5, 5.0, size=(2, t.n_harm))
    t.harm_phase = rng.uniform(0.0, 2 * np.pi, size=(2, t.n_harm))
    t.harm_w = rng.dirichlet(np.ones(t.n_harm), size=2)
    t.nod_dir = rng.standard_normal(3)
    t.nod_dir /= np.linalg.norm(t.nod_dir)
    t.nod_amp = rng.uniform(0.0, 0.6)
    t.r_core = max(t.r_core, t.rim * (1.0 + 0.5 * t.nod_amp) + 6.0)  # leave room for a necrotic centre
    t.ed_extent = ed_ratio * t.r_core
    t.rot = _random_rotation(rng)
    t.axis_scale = rng.uniform(0.85, 1.2, size=3)
    t.mass_effect = rng.uniform(0.0, 0.4)
    t.cand = rng.uniform(size=(60, 3))
    return t


def _intensity_parameters(rng: np.random.Generator) -> SimpleNamespace:
    """Per-modality contrast jitter, scanner scale, noise, bias field, partial volume and texture."""
    i = SimpleNamespace()
    i.jitter = {m: rng.uniform(0.96, 1.04, size=9) for m in MODALITIES}
    for m in MODALITIES:
        i.jitter[m][NCR:] = rng.uniform(0.9, 1.1, size=3)
    i.scale = {m: float(np.exp(rng.uniform(np.log(350.0), np.log(2800.0)))) for m in MODALITIES}
    i.noise_sd = {m: rng.uniform(0.015, 0.035) for m in MODALITIES}
    i.bias_amp = {m: rng.uniform(0.05, 0.08) for m in MODALITIES}
    i.pv_sigma = rng.uniform(0.5, 0.65)
    i.tex_amp = rng.uniform(0.015, 0.03)
    i.tum_tex_amp = rng.uniform(0.05, 0.10)
    return i


def _brain_outline(rng: np.random.Generator, shape: tuple[int, int, int], p: SimpleNamespace) -> SimpleNamespace:
    """Centred coordinates, normalised radius and cortical depth (mm inside the brain surface) of every voxel."""
    f32 = np.float32
    g = SimpleNamespace()
    X, Y, Z = shape
    g.xs = (np.arange(X, dtype=f32) - f32(p.cx)).reshape(-1, 1, 1)
    g.ys = (np.arange(Y, dtype=f32) - f32(p.cy)).reshape(1, -1, 1)
    g.zs = (np.arange(Z, dtype=f32) - f32(p.cz)).reshape(1, 1, -1)
    g.yn = g.ys / f32(p.ay)
    g.zn = g.zs / f32(p.az)
    ax_y = f32(p.ax) * (1.0 - f32(p.post_widen) * g.yn)
    g.xn = g.xs / ax_y  # (X, Y, 1)
    r = np.sqrt(g.xn * g.xn + (g.yn * g.yn + g.zn * g.zn))  # (X, Y, Z)
    g.r = np.maximum(r, f32(1e-3))
    grad = np.sqrt((g.xn / ax_y) ** 2 + ((g.yn / f32(p.ay)) ** 2 + (g.zn / f32(p.az)) ** 2)) / g.r
    g.outline = _smooth_noise(rng, shape, 22.0 * p.size)
    depth = (f32(1.0) + f32(0.035) * g.outline - g.r) / np.maximum(grad, f32(1e-4))
    g.floor_noise = _smooth_noise(rng, shape, 18.0 * p.size)
    depth_floor = g.zs + f32(p.floor_level * p.az) + f32(2.0) * g.floor_noise + f32(0.12 * p.az) * g.yn * g.yn
    g.depth = _smin(depth, depth_floor, 4.0).astype(f32)
    g.mask = g.depth > 0
    return g


def _place_tumour(p: SimpleNamespace, g: SimpleNamespace, shape: tuple[int, int, int]) -> np.ndarray:
    """The tumour centre: the first candidate point deep enough in the parenchyma of one hemisphere, else a
    deep point of that hemisphere with a smaller tumour (``p.r_core`` and ``p.ed_extent`` shrink)."""
    reach = p.r_core * (1.0 + p.core_pert_amp) * p.axis_scale.max()
    for k in range(p.cand.shape[0]):
        shrink = 1.0 - 0.3 * k / p.cand.shape[0]
        u = p.cand[k]
        cxn = p.hemi * (0.24 + 0.38 * u[0] * shrink)
        cyn = (u[1] - 0.5) * 1.25 * shrink
        czn = (u[2] - 0.4) * 0.9 * shrink
        point = np.array([p.cx + cxn * p.ax, p.cy + cyn * p.ay, p.cz + czn * p.az])
        ip = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(point, shape))
        if g.depth[ip] >= reach + 4.0 * max(p.size, 0.6):
            return point
    center = np.array([p.cx + p.hemi * 0.3 * p.ax, p.cy, p.cz + 0.1 * p.az])
    ip = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(center, shape))
    f = max(0.3, min(1.0, (g.depth[ip] - 3.0) / (reach + 4.0)))
    p.r_core = max(p.r_core * f, p.rim + 3.0)
    p.ed_extent *= f
    return center


def _midline(rng: np.random.Generator, p: SimpleNamespace, g: SimpleNamespace, tc: np.ndarray) -> SimpleNamespace:
    """Coordinates of the central slab warped by the tumour's mass effect, and the cortical depth with the
    interhemispheric fissure (a thin CSF sheet on the mid-sagittal plane above the corpus callosum)."""
    f32 = np.float32
    w = SimpleNamespace()
    X, Y, Z = g.depth.shape
    half_x = 0.55 * p.ax
    w.bx = (
        slice(int(max(0, np.floor(p.cx - half_x))), int(min(X, np.ceil(p.cx + half_x) + 1))),
        slice(0, Y),
        slice(0, Z),
    )
    xb = g.xs[w.bx[0]]
    push = p.mass_effect * (p.r_core + 0.5 * p.ed_extent)
    ex = xb - f32(tc[0] - p.cx)
    ey = g.ys - f32(tc[1] - p.cy)
    ez = g.zs - f32(tc[2] - p.cz)
    dist = np.sqrt(ex * ex + (ey * ey + ez * ez)) + f32(1e-3)
    lm = 1.6 * (p.r_core + p.ed_extent) + 6.0
    fac = f32(push) * np.exp(-((dist / f32(lm)) ** 2)) / dist
    w.xw = xb - ex * fac  # warped (source) coordinates relative to the brain centre
    w.yw = g.ys - ey * fac
    w.zw = g.zs - ez * fac
    w.ywn = w.yw / f32(p.ay)
    z_bottom = f32(p.az) * (f32(0.34) - f32(2.3) * np.maximum(np.abs(w.ywn) - f32(0.45), f32(0)))
    fis_noise = _smooth_noise(rng, (xb.shape[0], Y, Z), 14.0 * p.size)
    d_h = np.abs(w.xw - f32(1.2) * fis_noise)
    d_v = np.maximum(z_bottom - w.zw, f32(0))
    d_fis = np.sqrt(d_h * d_h + d_v * d_v) - f32(p.fis_w)
    w.depth_med = g.depth.copy()
    w.depth_med[w.bx] = np.minimum(g.depth[w.bx], d_fis)
    return w


def _cortex(
    rng: np.random.Generator, p: SimpleNamespace, g: SimpleNamespace, depth_med: np.ndarray, shape
) -> np.ndarray:
    """Tissue map of CSF (outer rim, sulci), the cortical ribbon and white matter.

    The gyral pattern is a smooth random function of the (slightly jittered) direction from the brain centre;
    its zero level sets are sheets roughly perpendicular to the brain surface (sulci) that meander because of
    the jitter."""
    f32 = np.float32
    n_grid = 72
    half = 1.2
    g_grid = _smooth_noise(rng, (n_grid, n_grid, n_grid), p.gyr_spacing * (n_grid - 1) / (2 * half))
    inv_r = 1.0 / g.r
    coords = np.empty((3,) + shape, dtype=f32)
    s = f32((n_grid - 1) / (2 * half))
    for k, comp in enumerate((g.xn, g.yn, g.zn)):
        jit = _smooth_noise(rng, shape, 7.0 * max(p.size, 0.6))
        coords[k] = (comp * inv_r + f32(p.gyr_jitter) * jit + f32(half)) * s
    gyr = ndi.map_coordinates(g_grid, coords, order=1, prefilter=False, mode="nearest")
    del coords, inv_r, jit
    rmm = np.sqrt(g.xs * g.xs + (g.ys * g.ys + g.zs * g.zs)) + f32(5.0)
    # |g| / |grad g| ~ distance (mm) to the zero sheet (mean gradient of the Gaussian-kernel field)
    d_sheet = np.abs(gyr) * rmm * f32(p.gyr_spacing / 1.11)
    sd = f32(p.sulc_depth) * (f32(1.0) + f32(0.3) * g.floor_noise)  # reuse: independent enough of the outline
    excess = np.maximum(g.depth - sd, f32(0))
    d_sulc = np.sqrt(d_sheet * d_sheet + excess * excess)
    del d_sheet, excess, gyr, rmm
    csf = (depth_med < f32(p.csf_w)) | (d_sulc < f32(p.sulc_w))
    ribbon = np.minimum(depth_med - f32(p.csf_w), d_sulc - f32(p.sulc_w))
    cortex = ribbon < f32(p.gm_th) * (f32(1.0) + f32(0.12) * g.outline)
    tissue = np.full(shape, WM, dtype=np.uint8)
    tissue[cortex] = GM
    tissue[csf] = CSF
    return tissue


def _deep_structures(p: SimpleNamespace, g: SimpleNamespace, w: SimpleNamespace, tissue: np.ndarray) -> None:
    """Deep grey nuclei (thalamus / basal ganglia) and lateral ventricles, in warped coordinates (in place)."""
    f32 = np.float32
    xwn = w.xw / f32(p.ax)
    zwn = w.zw / f32(p.az)
    tb = tissue[w.bx]
    q = ((np.abs(xwn) - f32(0.25)) / f32(0.09)) ** 2 + ((w.ywn + f32(0.08)) / f32(0.16)) ** 2
    q = q + ((zwn + f32(0.04)) / f32(0.12)) ** 2
    tb[(q < 1.0) & (tb == WM)] = DGM
    cos_t, sin_t = np.cos(p.vent_tilt), np.sin(p.vent_tilt)
    for i, side in enumerate((-1.0, 1.0)):
        vs = p.vent_scale * p.vent_asym[i]
        ra, rb = 7.0 * p.size * vs, 2.8 * p.size * vs  # "bat-wing" cross-section, tilted down laterally
        u = (w.ywn + f32(0.08)) / f32(0.50)
        up = np.maximum(-u, f32(0))  # posterior half: atrium / occipital horn diverge laterally
        xc = f32(side) * (f32(1.1 * p.size + ra * cos_t) + f32(p.ax) * (f32(0.04) * u * u + f32(0.2) * up * up))
        zc = f32(p.az) * (f32(0.16) - f32(0.22) * u * u - f32(0.12) * up)
        dxv = (w.xw - xc) * f32(side)
        dzv = w.zw - zc
        along = dxv * f32(cos_t) - dzv * f32(sin_t)
        across = dxv * f32(sin_t) + dzv * f32(cos_t)
        q = (along / f32(ra)) ** 2 + (across / f32(rb)) ** 2 + u * u
        vent = (q < 1.0) & (tb != CSF)
        tb[vent] = VENT
    tissue[w.bx] = tb


def _tumour_frame(p: SimpleNamespace, tc: np.ndarray, shape) -> tuple[tuple, np.ndarray, tuple]:
    """The tumour's bounding box, distance from its centre in its own (rotated, anisotropic) frame, and the
    unit direction components ``(u0, u1, u2)``, inside the box."""
    f32 = np.float32
    box_r = (p.r_core + p.ed_extent) * (1.0 + max(p.core_pert_amp, p.ed_pert_amp)) * p.axis_scale.max()
    tbx = _box(tc, box_r + 3.0 * p.finger_amp + 4.0, shape)
    px = (np.arange(tbx[0].start, tbx[0].stop, dtype=f32) - f32(tc[0])).reshape(-1, 1, 1)
    py = (np.arange(tbx[1].start, tbx[1].stop, dtype=f32) - f32(tc[1])).reshape(1, -1, 1)
    pz = (np.arange(tbx[2].start, tbx[2].stop, dtype=f32) - f32(tc[2])).reshape(1, 1, -1)
    m = (p.rot.T / p.axis_scale[:, None]).astype(f32)  # tumour frame, anisotropic
    d0 = m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz
    d1 = m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz
    d2 = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz
    rho = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2) + f32(1e-3)
    return tbx, rho, (d0 / rho, d1 / rho, d2 / rho)


def _tumour(rng, p: SimpleNamespace, g: SimpleNamespace, tc: np.ndarray, tissue: np.ndarray, shape) -> SimpleNamespace:
    """Render the tumour into ``tissue`` inside its bounding box: a lobulated enhancing core with a necrotic
    centre and finger-like oedema along white matter; returns what the images need (box, oedema and its
    weight, the underlying tissue, tumour mask and texture)."""
    f32 = np.float32
    tbx, rho, u = _tumour_frame(p, tc, shape)
    bshape = rho.shape

    def harmonics(j: int) -> np.ndarray:
        out = np.zeros(bshape, dtype=f32)
        for k in range(p.n_harm):
            v = p.harm_dirs[j, k]
            proj = f32(v[0]) * u[0] + f32(v[1]) * u[1] + f32(v[2]) * u[2]
            out += f32(p.harm_w[j, k]) * np.cos(f32(p.harm_freq[j, k]) * proj + f32(p.harm_phase[j, k]))
        return out

    pert_c = f32(1.0) + f32(p.core_pert_amp) * harmonics(0)
    pert_e = f32(1.0) + f32(p.ed_pert_amp) * harmonics(1)
    n_core = _smooth_noise(rng, bshape, 6.0 * max(p.size, 0.6))
    n_fing = _smooth_noise(rng, bshape, 7.0 * max(p.size, 0.6))
    n_tex = _smooth_noise(rng, bshape, 3.0)
    brain_b = g.mask[tbx]
    under = tissue[tbx].copy()

    rho_c = rho / pert_c + f32(p.core_lump) * n_core
    core = (rho_c < f32(p.r_core)) & brain_b
    nod = f32(1.0) + f32(p.nod_amp) * np.maximum(sum(f32(p.nod_dir[k]) * u[k] for k in range(3)), f32(0))
    rim_local = f32(p.rim) * nod * (f32(1.0) + f32(0.12) * n_tex) / np.sqrt(pert_c)
    # the erosion by a 5x5x5 cube guarantees an enhancing rim of >= 2 voxels in every direction
    necro = (rho_c < f32(p.r_core) - rim_local) & ndi.binary_erosion(
        core, structure=np.ones((3, 3, 3), bool), iterations=2
    )
    rho_e = rho / pert_e - f32(p.finger_amp) * n_fing
    env = (rho_e < f32(p.r_core + p.ed_extent)) | (rho_c < f32(p.r_core + p.ed_min))
    parench = (under == WM) | (under == DGM) | ((under == GM) & (rho_e < f32(p.r_core + p.ed_extent - 3.0)))
    parench |= (under == GM) & (rho_c < f32(p.r_core + p.ed_min))
    edema = env & parench & brain_b & ~core
    lab, _ = ndi.label(edema | core)
    keep = np.unique(lab[core])
    edema &= np.isin(lab, keep[keep > 0])
    ed_w = np.clip(f32(0.62) + f32(0.38) * (f32(p.r_core + p.ed_extent) - rho_e) / f32(4.0), f32(0.62), f32(1.0))
    ed_w = np.where(rho_c < f32(p.r_core + p.ed_min), f32(1.0), ed_w)

    tb = under.copy()
    tb[edema] = ED
    tb[core] = ET
    tb[necro] = NCR
    tissue[tbx] = tb
    return SimpleNamespace(box=tbx, edema=edema, ed_w=ed_w, under=under, tumour=tb >= NCR, texture=n_tex)


def _render_images(rng, p: SimpleNamespace, mask, tissue: np.ndarray, t: SimpleNamespace, shape) -> dict:
    """The four modalities from the tissue map: contrasts, oedema fading towards its border, tumour texture,
    partial volume, a smooth bias field, Rician noise and int16 scanner values (0 outside the brain)."""
    f32 = np.float32
    tex = _smooth_noise(rng, shape, 3.0)
    brain_idx = np.flatnonzero(mask)
    out: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        lut = (np.asarray(_CONTRAST[mod]) * p.jitter[mod]).astype(f32)
        img = lut[tissue]
        ib = img[t.box]
        ib[t.edema] = lut[t.under[t.edema]] * (f32(1.0) - t.ed_w[t.edema]) + lut[ED] * t.ed_w[t.edema]
        ib[t.tumour] *= f32(1.0) + f32(p.tum_tex_amp) * t.texture[t.tumour]
        img[t.box] = ib
        img *= f32(1.0) + f32(p.tex_amp) * tex
        img = ndi.gaussian_filter(img, p.pv_sigma, truncate=1.6, mode="constant")  # partial volume (3-tap)
        bias = _smooth_noise(rng, shape, 45.0 * p.size)
        flat = img.reshape(-1)[brain_idx] * np.exp(f32(p.bias_amp[mod]) * bias.reshape(-1)[brain_idx])
        sd = f32(p.noise_sd[mod] * lut[WM])
        n1 = rng.standard_normal(flat.shape[0], dtype=f32)
        n2 = rng.standard_normal(flat.shape[0], dtype=f32)
        flat = np.sqrt((flat + sd * n1) ** 2 + (sd * n2) ** 2) * f32(p.scale[mod] / max(lut[WM], 0.3))
        vol = np.zeros(int(np.prod(shape)), dtype=f32)
        vol[brain_idx] = np.clip(np.rint(flat), 1.0, _INT16_MAX)
        out[mod] = vol.reshape(shape)
    return out


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def case_name(index: int, prefix: str = CASE_PREFIX) -> str:
    """``BraTS20_Training_001`` for index 1."""
    return f"{prefix}{int(index):03d}"


def case_files(out_dir: str, index: int, prefix: str = CASE_PREFIX) -> dict[str, str]:
    """Paths of the five NIfTI files of one case (keys: the modalities and ``seg``)."""
    name = case_name(index, prefix)
    folder = os.path.join(str(out_dir), name)
    return {k: os.path.join(folder, f"{name}_{k}.nii.gz") for k in (*MODALITIES, LABEL_SUFFIX)}


def write_case(
    out_dir: str,
    index: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    prefix: str = CASE_PREFIX,
) -> dict[str, str]:
    """Generate case ``index`` and write it as ``out_dir/<prefix><index:03d>/<prefix><index:03d>_<key>.nii.gz``.

    Images are int16, the segmentation uint8, affine = identity (1 mm, RAS). Each file is written to a
    temporary name in the same folder and moved into place with ``os.replace`` (atomic).

    Returns:
        dict of file paths with keys ``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``.
    """
    files = case_files(out_dir, index, prefix)
    os.makedirs(os.path.dirname(files["seg"]), exist_ok=True)
    case = generate_case(index, seed=seed, shape=shape)
    for mod in MODALITIES:
        write_nifti(case[mod], files[mod], np.int16)
    write_nifti(case["seg"], files["seg"], np.uint8)
    return files


def write_dataset(
    out_dir: str,
    num_cases: int = 30,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    progress: bool = True,
) -> list[dict[str, str]]:
    """Write cases ``1..num_cases`` (skipping cases whose five files all exist); returns their file dicts."""
    from tqdm.auto import tqdm

    os.makedirs(str(out_dir), exist_ok=True)
    results = []
    for index in tqdm(range(1, int(num_cases) + 1), desc="synthetic BraTS", disable=not progress):
        files = case_files(out_dir, index)
        if not all(os.path.isfile(p) for p in files.values()):
            files = write_case(out_dir, index, seed=seed, shape=shape)
        results.append(files)
    return results


def write_monailabel_datastore(
    out_dir: str,
    num_cases: int = 10,
    num_labelled: int = 0,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    progress: bool = True,
) -> list[dict[str, str]]:
    """Write cases ``1..num_cases`` as a MONAI Label local datastore of four-modality studies.

    Layout (what ``monailabel start_server --studies out_dir`` reads; the image id is the file name):

    - ``out_dir/<case>.nii.gz``: one 4D NIfTI per study, ``X x Y x Z x 4`` int16, the last axis in the bundle's
      channel order T1, T1ce, T2, FLAIR;
    - ``out_dir/labels/final/<case>.nii.gz``: the BraTS label map (uint8, 0/1/2/4) of the first
      ``num_labelled`` cases, as if a clinician had already saved them.

    Existing files are kept (a re-run only adds what is missing). Returns one dict per case with keys
    ``image`` and, for labelled cases, ``label``.
    """
    from tqdm.auto import tqdm

    labels_dir = os.path.join(str(out_dir), "labels", "final")
    os.makedirs(labels_dir, exist_ok=True)
    results = []
    for index in tqdm(range(1, int(num_cases) + 1), desc="MONAI Label studies", disable=not progress):
        name = case_name(index)
        files = {"image": os.path.join(str(out_dir), f"{name}.nii.gz")}
        if index <= num_labelled:
            files["label"] = os.path.join(labels_dir, f"{name}.nii.gz")
        if not all(os.path.isfile(p) for p in files.values()):
            case = generate_case(index, seed=seed, shape=shape)
            write_nifti(np.stack([case[m] for m in MODALITIES], axis=-1), files["image"], np.int16)
            if "label" in files:
                write_nifti(case["seg"], files["label"], np.uint8)
        results.append(files)
    return results


# ----------------------------------------------------------------------------------------------
# preview
# ----------------------------------------------------------------------------------------------
def _load_case_dir(case_dir: str) -> dict[str, np.ndarray]:
    import glob

    import nibabel as nib

    out = {}
    for key in (*MODALITIES, "seg"):
        hits = sorted(glob.glob(os.path.join(case_dir, f"*_{key}.nii.gz")))
        if not hits:
            raise FileNotFoundError(f"no *_{key}.nii.gz in {case_dir}")
        out[key] = np.asarray(nib.load(hits[0]).dataobj)
    return out


def save_preview(
    case_dir_or_arrays: str | os.PathLike | Mapping[str, np.ndarray],
    png_path: str,
    plane: str = "axial",
    slice_index: int | None = None,
    dpi: int = 80,
    title: str = "synthetic BraTS-like case",
) -> str:
    """Save a PNG with one slice through the tumour centre: the four modalities and the label overlay.

    Args:
        case_dir_or_arrays: a case folder with ``*_{t1,t1ce,t2,flair,seg}.nii.gz`` or a dict of arrays
            (e.g. the output of :func:`generate_case`).
        png_path: output file.
        plane: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``.
        slice_index: slice to show; default: centre of mass of the tumour (of the brain if no tumour).
        title: figure title, followed by the plane and slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if isinstance(case_dir_or_arrays, (str, os.PathLike)):
        case = _load_case_dir(os.fspath(case_dir_or_arrays))
    else:
        case = dict(case_dir_or_arrays)
    seg = np.asarray(case["seg"])
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    if slice_index is None:
        ref = seg > 0 if np.any(seg > 0) else np.asarray(case["t1"]) > 0
        slice_index = int(round(ndi.center_of_mass(ref)[axis]))

    def cut(a):
        return np.take(np.asarray(a), slice_index, axis=axis).T  # rows: y (axial) or z, origin lower

    titles = dict(zip(MODALITIES, MODALITY_NAMES))
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 3.0))
    for axh, mod in zip(axes, MODALITIES):
        sl = cut(case[mod]).astype(np.float32)
        vals = sl[sl > 0]
        vmax = float(np.percentile(vals, 99.5)) if vals.size else 1.0
        axh.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
        axh.set_title(titles[mod], fontsize=10)
    base = cut(case["flair"]).astype(np.float32)
    vals = base[base > 0]
    vmax = float(np.percentile(vals, 99.5)) if vals.size else 1.0
    overlay = np.zeros(base.shape + (4,), dtype=np.float32)
    s = cut(seg)
    colours = {v: tuple(c / 255 for c in rgb) for v, rgb in zip(BRATS2020_LABELS, CLASS_COLOURS)}
    for lab, col in colours.items():
        overlay[s == lab] = (*col, 0.55)
    axes[4].imshow(base, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
    axes[4].imshow(overlay, origin="lower", interpolation="nearest")
    axes[4].set_title("labels on FLAIR", fontsize=10)
    axes[4].legend(
        handles=[Patch(color=colours[k], label=n) for k, n in ((1, "1 NCR"), (2, "2 ED"), (4, "4 ET"))],
        loc="lower right",
        fontsize=6,
        framealpha=0.6,
        handlelength=1.0,
    )
    for axh in axes:
        axh.set_xticks([])
        axh.set_yticks([])
    fig.suptitle(f"{title}, {plane} slice {slice_index}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    plt.close(fig)
    return png_path


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    parser = argparse.ArgumentParser(description="Write synthetic BraTS-2020-like cases (NIfTI).")
    parser.add_argument("--output_dir", required=True, help="dataset folder (one sub-folder per case)")
    parser.add_argument("--num_cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"))
    parser.add_argument("--preview", default=None, help="optional PNG preview of case 1")
    parser.add_argument(
        "--monailabel",
        action="store_true",
        help="write a MONAI Label datastore instead: one 4D NIfTI study per case, labels/final/ for --num_labelled",
    )
    parser.add_argument("--num_labelled", type=int, default=0, help="with --monailabel: cases given a final label")
    parser.add_argument("--no_progress", action="store_true", help="disable the progress bar")
    args = parser.parse_args(argv)
    if args.monailabel:
        cases = write_monailabel_datastore(
            args.output_dir, args.num_cases, args.num_labelled, args.seed, args.shape, progress=not args.no_progress
        )
        print(f"{len(cases)} studies ({args.num_labelled} labelled) in {args.output_dir}")
        return cases
    cases = write_dataset(
        args.output_dir, args.num_cases, seed=args.seed, shape=args.shape, progress=not args.no_progress
    )
    if args.preview and cases:
        save_preview(os.path.dirname(cases[0]["seg"]), args.preview)
    print(f"{len(cases)} cases in {args.output_dir}")
    return cases


if __name__ == "__main__":
    main()
