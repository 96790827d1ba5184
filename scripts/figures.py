"""Figures of one case for the report and the docs: three orthogonal slices through the tumour with the
segmentation, Grad-CAM or uncertainty overlaid. Arrays are (X, Y, Z) in RAS (the bundle's preprocessed grid);
slices are shown in the neurological convention (patient's right on the right, anterior / superior up).
Matplotlib's Agg canvas is used directly: no display, no pyplot state."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from scripts.conventions import REGIONS

VIEWS = ("axial", "coronal", "sagittal")
LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (1, 0.2, 0.2, 0.6), (0.2, 0.9, 0.2, 0.45), (1, 0.9, 0.1, 0.7)])
"""Transparent, necrotic core (red), oedema (green), enhancing tumour (yellow)."""


def centre_of(mask: np.ndarray, fallback: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel at the centre of mass of ``mask`` (of ``fallback`` when empty; the volume centre at worst)."""
    for m in (mask, fallback):
        if m is not None and m.any():
            return tuple(int(round(c)) for c in np.argwhere(m).mean(0))
    return tuple(s // 2 for s in mask.shape)


def slice_of(volume: np.ndarray, view: str, centre) -> np.ndarray:
    """The 2D slice of ``view`` through ``centre``, oriented for ``imshow(origin='lower')``."""
    x, y, z = centre
    if view == "axial":
        return volume[:, :, z].T
    if view == "coronal":
        return volume[:, y, :].T
    return volume[x, :, :].T


def _figure(rows: int, cols: int = 3, size: float = 2.6) -> Figure:
    fig = Figure(figsize=(cols * size, rows * size), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=max(float(image.max()), 1e-6))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def segmentation_figure(flair: np.ndarray, t1ce: np.ndarray, classes: np.ndarray, centre) -> Figure:
    """Two rows (FLAIR with the segmentation, T1ce plain) x three views. ``classes``: 0 background,
    1 necrotic core, 2 oedema, 3 enhancing tumour."""
    fig = _figure(2)
    for j, view in enumerate(VIEWS):
        ax = fig.add_subplot(2, 3, j + 1)
        _show(ax, slice_of(flair, view, centre), f"FLAIR + segmentation, {view}")
        ax.imshow(slice_of(classes, view, centre), cmap=LABEL_COLOURS, vmin=0, vmax=3, origin="lower")
        _show(fig.add_subplot(2, 3, j + 4), slice_of(t1ce, view, centre), f"T1ce, {view}")
    fig.tight_layout()
    return fig


def heatmap_figure(background: np.ndarray, maps: np.ndarray, masks: np.ndarray, centre, title: str) -> Figure:
    """One row per region (``maps``/``masks``: (R, X, Y, Z)): the map over ``background`` in ``jet`` with
    the predicted region's outline."""
    fig = _figure(len(REGIONS))
    for i, region in enumerate(REGIONS):
        for j, view in enumerate(VIEWS):
            ax = fig.add_subplot(len(REGIONS), 3, i * 3 + j + 1)
            _show(ax, slice_of(background, view, centre), f"{title} {region}, {view}")
            heat = slice_of(maps[i], view, centre)
            heat = np.ma.masked_less(heat, 0.05)  # no colour where there is (almost) nothing to show
            ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, origin="lower")
            outline = slice_of(masks[i].astype(float), view, centre)
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="white", linewidths=0.8, origin="lower")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
