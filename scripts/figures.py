"""Figures of one case for the report and the docs: three orthogonal slices through the tumour of the native
images, the segmentation, the reference, Grad-CAM or uncertainty.

Arrays are (X, Y, Z) on the canonical grid (RAS: x towards the patient's right, y anterior, z superior; see
:func:`canonical`). Slices are shown in the **radiological convention**: the patient's right on the image's
left; axial slices seen from the feet (anterior up), coronal from the front (superior up), sagittal with
anterior on the left (superior up). Every panel carries its orientation marks (R/L, A/P, S/I) on
:data:`MARK_COLOUR` tags, pixel aspect follows the voxel spacing, and every map has a colour bar. Label colours
are :data:`scripts.conventions.CLASS_COLOURS`. Matplotlib's Agg canvas is used directly: no display, no pyplot
state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from scripts.conventions import CLASS_COLOURS, CLASS_DESCRIPTIONS, REFERENCE_COLOUR, REGIONS

VIEWS = ("axial", "coronal", "sagittal")
MARKS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
"""Orientation marks of each view: (image left, image right, image top, image bottom)."""
MARK_COLOUR = (255, 140, 0)
"""RGB of the tags behind the orientation marks (orange: none of the label colours)."""
LABEL_ALPHA = 0.45
LABEL_COLOURS = ListedColormap([(0, 0, 0, 0)] + [(*(v / 255 for v in c), LABEL_ALPHA) for c in CLASS_COLOURS])
"""Transparent, then :data:`scripts.conventions.CLASS_COLOURS` (class index 1, 2, 3) half-transparent."""
MAP_STYLE = {"Grad-CAM": ("plasma", 0.1, "Grad-CAM (0-1)"), "entropy": ("YlOrRd", 0.05, "TTA entropy (bits)")}
"""Colour map, the value below which nothing is drawn, and the colour bar's label of each kind of map."""


def _rgb(colour: Sequence[int]) -> tuple:
    return tuple(v / 255 for v in colour)


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """``volume`` (X, Y, Z[, C]) with its voxel-to-RAS ``affine`` on the canonical RAS grid (axis flips and
    permutations only, no resampling; a view, not a copy) and the voxel spacing (mm) of that grid."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.asarray(affine, dtype=float))
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    order = [int(a) for a in ornt[:, 0]]  # input axis i goes to output axis order[i]
    out_spacing = [0.0] * 3
    for i, axis in enumerate(order):
        out_spacing[axis] = float(spacing[i])
    return nio.apply_orientation(volume, ornt), tuple(out_spacing)


def window(volume: np.ndarray, brain: np.ndarray | None = None, low: float = 1.0, high: float = 99.0) -> tuple:
    """(vmin, vmax): the ``low``-th and ``high``-th percentiles of ``volume`` inside ``brain`` (its non-zero
    voxels by default), on at most 1e6 voxels."""
    values = volume[brain if brain is not None else volume != 0]
    if not values.size:
        return 0.0, 1.0
    values = values[:: max(1, values.size // 1_000_000)]
    vmin, vmax = (float(v) for v in np.percentile(values, (low, high)))
    return vmin, max(vmax, vmin + 1e-6)


def centre_of(mask: np.ndarray, fallback: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel at the centre of mass of ``mask`` (of ``fallback`` when empty; the volume centre at worst)."""
    for m in (mask, fallback):
        if m is not None and m.any():
            return tuple(int(round(c)) for c in np.argwhere(m).mean(0))
    return tuple(s // 2 for s in mask.shape)


def display_slice(volume: np.ndarray, view: str, centre) -> np.ndarray:
    """The 2D slice of ``view`` through ``centre`` as shown (row 0 at the top): radiological convention, see
    the module docstring. Each view drops one axis and reverses the other two."""
    x, y, z = centre
    plane = {"axial": volume[:, :, z], "coronal": volume[:, y, :], "sagittal": volume[x, :, :]}[view]
    return plane[::-1, ::-1].T


def aspect_of(view: str, spacing: Sequence[float]) -> float:
    """Height / width of one displayed pixel of ``view`` for voxel ``spacing`` (x, y, z) in mm."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def _figure(rows: int, cols: int = 3, size: float = 2.5, extra: float = 0.0, layout=None) -> Figure:
    fig = Figure(figsize=(cols * size + extra, rows * size), dpi=90, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def mark(ax, view: str) -> None:
    """The orientation marks of ``view`` at the middle of each side of the panel."""
    tag = {"boxstyle": "square,pad=0.15", "facecolor": _rgb(MARK_COLOUR), "edgecolor": "none"}
    left, right, top, bottom = MARKS[view]
    spots = ((0.03, 0.5, left, "left", "center"), (0.97, 0.5, right, "right", "center"),
             (0.5, 0.97, top, "center", "top"), (0.5, 0.03, bottom, "center", "bottom"))  # fmt: skip
    for x, y, text, ha, va in spots:
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8, fontweight="bold", color="black",
                bbox=tag)  # fmt: skip


def _panel(fig, rows, index, image, view, centre, spacing, win, title):
    ax = fig.add_subplot(rows, 3, index)
    ax.imshow(display_slice(image, view, centre), cmap="gray", vmin=win[0], vmax=win[1],
              aspect=aspect_of(view, spacing), interpolation="nearest")  # fmt: skip
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    mark(ax, view)
    return ax


def _outline(ax, mask: np.ndarray, view: str, centre, colour, style: str = "solid") -> None:
    plane = display_slice(mask.astype(np.float32), view, centre)
    if plane.any():
        ax.contour(plane, levels=[0.5], colors=[colour], linewidths=1.0, linestyles=style)


def _absent_panel(fig, rows, index, title: str, text: str = "not acquired"):
    """A framed empty panel saying ``text``: a sequence that has no image to show (never a blank image)."""
    ax = fig.add_subplot(rows, 3, index)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.92")
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.25")
    ax.set_title(title, fontsize=8)
    return ax


def images_figure(images: dict, centre, spacing, windows: dict) -> Figure:
    """One row per sequence (``images``: {name: (X, Y, Z) native intensities, or ``None`` for a sequence that
    was not acquired: its panels say so}), windowed by ``windows`` ({name: (vmin, vmax)}), three views."""
    fig = _figure(len(images))
    for i, (name, image) in enumerate(images.items()):
        for j, view in enumerate(VIEWS):
            if image is None:
                _absent_panel(fig, len(images), i * 3 + j + 1, f"{name}, {view}: not acquired")
                continue
            _panel(fig, len(images), i * 3 + j + 1, image, view, centre, spacing, windows[name], f"{name}, {view}")
    fig.tight_layout()
    return fig


def _legend(fig, extra=()) -> None:
    handles = [Patch(color=_rgb(c), label=d) for c, d in zip(CLASS_COLOURS, CLASS_DESCRIPTIONS)]
    fig.legend(handles=[*handles, *extra], loc="lower center", ncol=len(handles) + len(extra), fontsize=8,
               frameon=False)  # fmt: skip


def segmentation_figure(backgrounds: dict, classes: np.ndarray, centre, spacing, windows: dict) -> Figure:
    """One row per background sequence (``backgrounds``: {name: volume}) with the segmentation (``classes``:
    0 background, 1 necrotic core, 2 oedema, 3 enhancing tumour) over it, three views, and the legend."""
    rows = len(backgrounds)
    fig = _figure(rows)
    for i, (name, image) in enumerate(backgrounds.items()):
        for j, view in enumerate(VIEWS):
            ax = _panel(fig, rows, i * 3 + j + 1, image, view, centre, spacing, windows[name],
                        f"{name} + segmentation, {view}")  # fmt: skip
            ax.imshow(display_slice(classes, view, centre), cmap=LABEL_COLOURS, vmin=0, vmax=3,
                      aspect=aspect_of(view, spacing), interpolation="nearest")  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _legend(fig)
    return fig


def reference_figure(background: np.ndarray, classes: np.ndarray, reference: np.ndarray, centre, spacing, win,
                     name: str = "FLAIR") -> Figure:  # fmt: skip
    """Two rows over ``background``: the reference's classes as outlines in the label colours, then the
    prediction (filled) with the reference's whole tumour outlined in :data:`REFERENCE_COLOUR` (dashed)."""
    fig = _figure(2)
    for j, view in enumerate(VIEWS):
        ax = _panel(fig, 2, j + 1, background, view, centre, spacing, win, f"{name} + reference, {view}")
        for k, colour in enumerate(CLASS_COLOURS, start=1):
            _outline(ax, reference == k, view, centre, _rgb(colour))
        ax = _panel(fig, 2, j + 4, background, view, centre, spacing, win, f"prediction vs reference, {view}")
        ax.imshow(display_slice(classes, view, centre), cmap=LABEL_COLOURS, vmin=0, vmax=3,
                  aspect=aspect_of(view, spacing), interpolation="nearest")  # fmt: skip
        _outline(ax, reference > 0, view, centre, _rgb(REFERENCE_COLOUR), "dashed")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _legend(fig, [Patch(facecolor="none", edgecolor=_rgb(REFERENCE_COLOUR), linestyle="--",
                        label="reference whole tumour")])  # fmt: skip
    return fig


def heatmap_figure(background: np.ndarray, maps: np.ndarray, masks: np.ndarray, centre, spacing, win, title: str,
                   name: str) -> Figure:  # fmt: skip
    """One row per region (``maps``/``masks``: (R, X, Y, Z)): the map (style :data:`MAP_STYLE` of ``title``)
    over ``background`` (sequence ``name``, window ``win``) with the predicted region's outline in white and one
    colour bar per row."""
    cmap, floor, label = MAP_STYLE[title]
    fig = _figure(len(REGIONS), extra=0.6, layout="constrained")
    for i, region in enumerate(REGIONS):
        shown = None
        for j, view in enumerate(VIEWS):
            ax = _panel(fig, len(REGIONS), i * 3 + j + 1, background, view, centre, spacing, win,
                        f"{title} {region} on {name}, {view}")  # fmt: skip
            heat = np.ma.masked_less(display_slice(maps[i], view, centre), floor)  # nothing where ~nothing to show
            shown = ax.imshow(heat, cmap=cmap, alpha=0.65, vmin=0, vmax=1, aspect=aspect_of(view, spacing),
                              interpolation="nearest")  # fmt: skip
            _outline(ax, masks[i], view, centre, "white")
        fig.colorbar(shown, ax=fig.axes[-3:], fraction=0.04, pad=0.02, label=f"{label}, {region}")
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
