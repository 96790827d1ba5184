"""The transforms this bundle needs that MONAI lacks (the configs use MONAI's for everything else).

* :class:`LabelToRegionsd` / :class:`RegionsToLabeld` convert between a BraTS label map and the three
  overlapping region channels the network predicts, in the fixed order TC, WT, ET:

  - TC (tumour core)     = necrotic/non-enhancing core + enhancing tumour
  - WT (whole tumour)    = TC + peritumoral oedema
  - ET (enhancing tumour)

  The label values are configurable, ``(necrotic, oedema, enhancing)``: ``(1, 2, 4)`` for BraTS 2017-2020,
  ``(1, 2, 3)`` for BraTS 2021 and later.
* :class:`NestRegionsd` nests binary region channels as the label map written from them has them (ET inside TC
  inside WT), so that validation scores the regions inference serves.
* :class:`BrainNormalized` scales every channel to [0, 1] inside the brain (robust percentiles), keeping the
  background at exactly 0.
* :class:`BrainHistogramEqualized` equalises the histogram of every channel inside the brain only.
* :class:`MaskOutsideBraind` clears predictions outside the brain.
* :class:`CaseIdToMetad` hands the datalist's case id to ``SaveImaged`` (outputs named ``<case_id>.nii.gz``).
* :class:`LoadImageSharedGridd` is MONAI's ``LoadImaged`` stacking modality files whose affines agree within
  ``scripts.conventions.AFFINE_ATOL_MM`` (:func:`affines_match`);
* :class:`LoadLabeld` loads the label map when the item has one; :class:`PathSafeSpacingd` is MONAI's ``Spacingd``
  tolerating MONAI Label's ``image_path`` entry.
* :class:`SelectChannelsd` reorders channels per item (e.g. MSD's FLAIR, T1w, T1gd, T2w into T1, T1ce, T2, FLAIR).
* :class:`CheckImageDatad` checks the loaded data (channels, NaN/Inf, empty modalities) and raises
  :class:`CaseError` naming the file; ``scripts.data.checks`` turns these errors into skipped cases.

The interactive model's click and guidance transforms are in ``scripts.interactive``, with the rest of that
model.

The brain is the set of voxels where any channel is non-zero: BraTS-style images are skull-stripped, so the
background is exactly 0 in every modality.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelReader
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform, Spacingd
from monai.utils import convert_to_dst_type

from scripts.conventions import (
    AFFINE_ATOL_MM,
    BRATS2020_LABELS,
    MODALITIES,
    MODALITY_NAMES,
    REGION_CLASSES,
    REGIONS,
    TUMOUR_CLASSES,
)
from scripts.metrics import lesions


def source_name(img) -> str:
    """The file an image came from, for error messages (``'<unknown>'`` when it has no metadata)."""
    meta = getattr(img, "meta", {}) or {}
    name = meta.get("filename_or_obj", "<unknown>")
    return str(name[0] if isinstance(name, (list, tuple)) and name else name)


def brain_mask(img: torch.Tensor) -> torch.Tensor:
    """Voxels where any channel is non-zero. ``img``: (C, *spatial) -> bool (*spatial)."""
    return (img != 0).any(dim=0)


def non_integer_labels(label) -> str | None:
    """``None`` when every voxel of the label map ``label`` holds an integer value, else the problem in one line:
    the offending values (up to 5) and how many voxels hold them. A label map resampled with interpolation
    holds values such as 1.0000001 or 2.5; truncating them with ``int()`` would drop those voxels silently."""
    t = torch.as_tensor(label)
    if not t.is_floating_point():
        return None
    bad = ~torch.isfinite(t) | (t != torch.round(t))
    count = int(bad.sum())
    if not count:
        return None
    values = torch.unique(t[bad]).tolist()
    shown = ", ".join(f"{v:.9g}" for v in values[:5]) + (f", ... ({len(values)} distinct)" if len(values) > 5 else "")
    return (
        f"non-integer label values [{shown}] in {count} voxel(s) (a label map resampled with interpolation? "
        "labels must be integers; resample with nearest neighbour)"
    )


def label_to_regions(label: torch.Tensor, labels: Sequence[int] = BRATS2020_LABELS) -> torch.Tensor:
    """BraTS label map (1, *spatial) -> float region channels (3, *spatial) in order TC, WT, ET.

    Raises :class:`CaseError` (a ``ValueError``) naming the source file when the map is not single-channel or
    holds values outside ``{0} | labels``.
    """
    if label.shape[0] != 1:
        raise CaseError(source_name(label), f"expected a single-channel label map, got shape {tuple(label.shape)}")
    lab = label[0]
    problem = non_integer_labels(lab)
    if problem:
        raise CaseError(source_name(label), problem)
    values = torch.unique(lab).tolist()
    unexpected = sorted(set(int(v) for v in values) - {0, *labels})
    if unexpected:
        raise CaseError(
            source_name(label),
            f"label values {unexpected} are outside the expected set {[0, *labels]} "
            f"(necrotic, oedema, enhancing = {list(labels)})",
        )
    value = dict(zip(TUMOUR_CLASSES, labels))
    regions = [torch.isin(lab, torch.tensor([value[c] for c in REGION_CLASSES[r]], device=lab.device)) for r in REGIONS]
    return torch.stack(regions).float()


def regions_to_label(regions: torch.Tensor, labels: Sequence[int] = BRATS2020_LABELS) -> torch.Tensor:
    """Binary region channels (3, *spatial) in order TC, WT, ET -> uint8 label map (1, *spatial).

    The regions are nested the BraTS way: WT paints oedema, TC inside it paints the necrotic core, ET
    inside it paints enhancing tumour, so ET outside TC or TC outside WT still gets a label.
    """
    if regions.shape[0] != 3:
        raise ValueError(f"expected 3 region channels (TC, WT, ET), got shape {tuple(regions.shape)}")
    necrotic, oedema, enhancing = labels
    tc, wt, et = (regions[i] > 0.5 for i in range(3))
    out = torch.zeros(regions.shape[1:], dtype=torch.uint8, device=regions.device)
    out[wt] = oedema
    out[tc] = necrotic
    out[et] = enhancing
    return out[None]


def nested(regions: torch.Tensor) -> torch.Tensor:
    """Boolean region masks (TC, WT, ET) as the label map written from them has them (:func:`regions_to_label`):
    ET inside TC inside WT (TC gains the ET outside it, WT the TC and ET outside it)."""
    tc, wt, et = (regions[REGIONS.index(r)] for r in ("TC", "WT", "ET"))
    out = torch.empty_like(regions)
    out[REGIONS.index("ET")] = et
    out[REGIONS.index("TC")] = tc | et
    out[REGIONS.index("WT")] = wt | tc | et
    return out


class LabelConversiond(MapTransform):
    """Base of the two label conversions: ``convert(img, labels)`` on every key, with the label convention
    ``labels`` = (necrotic, oedema, enhancing), or the item's own one when ``labels_key`` is set and the item
    carries that key (e.g. ``"labels": [2, 1, 3]`` for MSD Task01, ``[1, 2, 3]`` for BraTS 2023), so one config
    serves every dataset layout."""

    convert = staticmethod(label_to_regions)
    dtype = torch.float32

    def __init__(
        self,
        keys: KeysCollection,
        labels: Sequence[int] = BRATS2020_LABELS,
        labels_key: str | None = None,
        allow_missing_keys=False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.labels = tuple(int(v) for v in labels)
        self.labels_key = labels_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        labels = _item_labels(d, self.labels_key, self.labels)
        for key in self.key_iterator(d):
            img = d[key]
            d[key], *_ = convert_to_dst_type(self.convert(torch.as_tensor(img), labels), img, dtype=self.dtype)
        return d


class LabelToRegionsd(LabelConversiond):
    """Dictionary transform: BraTS label map -> 3 float region channels (TC, WT, ET), see
    :func:`label_to_regions` and :class:`LabelConversiond` for ``labels``/``labels_key``."""

    convert = staticmethod(label_to_regions)
    dtype = torch.float32


class RegionsToLabeld(LabelConversiond):
    """Dictionary transform: 3 binary region channels (TC, WT, ET) -> uint8 label map (1, *spatial), see
    :func:`regions_to_label` and :class:`LabelConversiond` for ``labels``/``labels_key``."""

    convert = staticmethod(regions_to_label)
    dtype = torch.uint8


class NestRegionsd(MapTransform):
    """Dictionary transform: binary region channels (TC, WT, ET) -> the regions of the label map written from them
    (:func:`nested`), same shape, type and metadata. A validation that scores the network's regions after it
    scores what inference serves: a prediction saved as a label scores Dice 1 against the same weights."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            d[key], *_ = convert_to_dst_type(nested(torch.as_tensor(img) > 0.5), img, dtype=img.dtype)
        return d


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pieces of a boolean mask as the evaluation counts lesions (:func:`scripts.metrics.lesions`):
    ``(labels, sizes)``, ``sizes[i]`` the voxels of piece ``i + 1``."""
    labels, n = lesions(mask)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def keep_main_tumour(
    regions: np.ndarray,
    voxel_ml: float = 0.001,
    min_fraction: float = 0.1,
    min_piece_ml: float = 0.0,
    et_min_ml: float = 0.0,
) -> np.ndarray:
    """Remove the scattered pieces of a prediction, per region, as nnU-Net's post-processing does.

    ``regions``: boolean (3, *spatial) in order TC, WT, ET, nested (ET inside TC inside WT). Whole tumour: keep
    the largest 26-connected piece and every piece of at least ``min_fraction`` of its volume and
    ``min_piece_ml``; TC and ET keep only what lies in the kept whole tumour, then lose their own pieces smaller
    than ``min_piece_ml``. BraTS's ET rule: when less than ``et_min_ml`` of enhancing tumour remains, it is
    relabelled necrosis (it stays in TC, leaves ET). ``voxel_ml``: the volume of one voxel. Returns the
    filtered boolean regions (same shape), still nested.
    """
    tc, wt, et = (np.asarray(regions[REGIONS.index(r)], bool) for r in ("TC", "WT", "ET"))
    labels, sizes = _components(wt)
    if sizes.size:
        keep = (sizes >= min_fraction * sizes.max()) & (sizes * voxel_ml >= min_piece_ml)
        keep[np.argmax(sizes)] = True
        wt = np.isin(labels, np.flatnonzero(keep) + 1)
    tc, et = tc & wt, et & wt
    for mask in (tc, et):
        labels, sizes = _components(mask)
        small = np.flatnonzero(sizes * voxel_ml < min_piece_ml) + 1
        mask[np.isin(labels, small)] = False
    et &= tc
    if et.sum() * voxel_ml < et_min_ml:
        et[:] = False
    out = np.empty(regions.shape, bool)
    out[REGIONS.index("TC")], out[REGIONS.index("WT")], out[REGIONS.index("ET")] = tc, wt, et
    return out


class KeepMainTumourd(MapTransform):
    """Dictionary transform of :func:`keep_main_tumour` on binary region channels (TC, WT, ET), e.g. right after
    ``AsDiscreted``: the regions are nested first (:func:`nested`), then the scattered pieces are removed. The
    voxel volume comes from the image's affine (1 mm³ without one). Same shape, type and metadata out.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_fraction: float = 0.1,
        min_piece_ml: float = 0.0,
        et_min_ml: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
        if min_piece_ml < 0 or et_min_ml < 0:
            raise ValueError(f"min_piece_ml and et_min_ml must be >= 0, got {min_piece_ml} and {et_min_ml}")
        self.min_fraction, self.min_piece_ml, self.et_min_ml = min_fraction, min_piece_ml, et_min_ml

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = getattr(img, "affine", None)
            voxel_ml = 0.001 if affine is None else abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
            regions = nested(torch.as_tensor(img) > 0.5).cpu().numpy()
            out = keep_main_tumour(regions, voxel_ml, self.min_fraction, self.min_piece_ml, self.et_min_ml)
            d[key], *_ = convert_to_dst_type(torch.from_numpy(out), img, dtype=img.dtype)
        return d


class BrainNormalized(MapTransform):
    """Scale each channel to [0, 1] inside the brain; the background stays exactly 0.

    Intensities are mapped linearly from the ``lower``/``upper`` percentiles of the channel's brain voxels to
    [0, 1] and clipped, which makes the result robust to a few hot voxels. Input (C, *spatial) float.
    """

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper = lower, upper

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key]).float()
            mask = brain_mask(img)
            out = torch.zeros_like(img)
            if mask.any():
                for c in range(img.shape[0]):
                    vals = img[c][mask]
                    lo, hi = torch.quantile(_subsample(vals), torch.tensor([self.lower, self.upper]) / 100.0)
                    scaled = ((img[c] - lo) / (hi - lo).clamp_min(1e-8)).clamp(0.0, 1.0)
                    out[c] = torch.where(mask, scaled, torch.zeros_like(scaled))
            d[key], *_ = convert_to_dst_type(out, d[key], dtype=torch.float32)
        return d


class BrainHistogramEqualized(MapTransform):
    """Histogram equalisation of each channel inside the brain; the background stays exactly 0.

    Each brain voxel is replaced by the fraction of brain voxels of its channel with a lower value (the
    empirical CDF over ``num_bins`` bins), so every channel's brain intensities spread uniformly over (0, 1].
    ``strength`` blends the equalised image with the input (1 = full equalisation, 0 = unchanged), which keeps
    some of the original contrast when less than full equalisation is wanted. Input (C, *spatial) in [0, 1].
    """

    def __init__(self, keys: KeysCollection, num_bins: int = 256, strength: float = 1.0, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.num_bins, self.strength = num_bins, strength

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key]).float()
            mask = brain_mask(img)
            out = img.clone()
            if mask.any():
                for c in range(img.shape[0]):
                    vals = img[c][mask]
                    lo, hi = vals.min(), vals.max()
                    if hi <= lo:  # a constant channel (a missing sequence is all zero) stays as it is
                        continue
                    hist = torch.histc(vals, bins=self.num_bins, min=float(lo), max=float(hi))
                    cdf = torch.cumsum(hist, 0) / vals.numel()
                    idx = ((img[c] - lo) / (hi - lo).clamp_min(1e-8) * (self.num_bins - 1)).long()
                    equalised = cdf[idx.clamp(0, self.num_bins - 1)]
                    blended = self.strength * equalised + (1.0 - self.strength) * img[c]
                    out[c] = torch.where(mask, blended, torch.zeros_like(blended))
            d[key], *_ = convert_to_dst_type(out, d[key], dtype=torch.float32)
        return d


class RandModalityDropoutd(RandomizableTransform, MapTransform):
    """Modality dropout: with probability ``prob``, zero all voxels of a random set of channels, keeping a
    non-empty proper subset drawn uniformly among the ``2**C - 2`` of them (for 4 sequences: 14 subsets, each
    about ``prob / 14`` of the samples).

    A missing sequence reaches the network the same way at inference: its channel is all zero (the brain is
    where any channel is non-zero, and every present sequence is in (0, 1] inside it after
    :class:`BrainHistogramEqualized`), so the network tells absent from present sequences by the zero channel
    alone. Use it after every intensity transform. Input (C, *spatial).
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.5, allow_missing_keys: bool = False):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._keep: list[int] | None = None

    def randomize(self, num_channels: int) -> None:
        super().randomize(None)
        self._keep = None
        if self._do_transform and num_channels > 1:
            subset = int(self.R.randint(1, 2**num_channels - 1))  # 1 .. 2**C - 2: non-empty, not all
            self._keep = [c for c in range(num_channels) if subset >> c & 1]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(int(d[keys[0]].shape[0]))
        if self._keep is None:
            return d
        for key in keys:
            img = d[key].clone()
            drop = [c for c in range(img.shape[0]) if c not in self._keep]
            img[drop] = 0
            d[key] = img
        return d


class ImputeMissingSequencesd(MapTransform):
    """Fill in missing sequences with :class:`scripts.networks.imputer.SequenceImputer` (weights ``weights``).

    A sequence is missing when its channel is all zero, as :class:`LoadImageSharedGridd` leaves it with
    ``allow_missing_modalities``. A case with every sequence present passes through unchanged and the weights are
    not read; the first case with a missing sequence loads them (once). Use it after
    :class:`BrainHistogramEqualized`: the imputer predicts the network's input intensities. Input (M, *spatial).

    ``stand_ins``: ``{missing sequence: present sequence}`` pairs (MODALITIES names) whose missing sequence is
    replaced by the present one as it is instead of the imputer's prediction, e.g. ``{"t1": "t1ce"}``: T1ce is
    the same T1-weighted acquisition after contrast, so it stands in for a missing T1.

    Raises:
        CaseError: the weights file is missing or unreadable (named, with what to do).
    """

    def __init__(
        self, keys: KeysCollection, weights: str, stand_ins: Mapping | None = None, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.weights = str(weights)
        unknown = sorted((set(stand_ins or {}) | set((stand_ins or {}).values())) - set(MODALITIES))
        if unknown:
            raise ValueError(f"stand_ins: unknown sequence name(s) {unknown}; use {list(MODALITIES)}")
        self.stand_ins = {MODALITIES.index(a): MODALITIES.index(b) for a, b in (stand_ins or {}).items()}
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def model(self, num_sequences: int) -> torch.nn.Module:
        with self._lock:
            if self._model is None:
                from scripts.networks.imputer import SequenceImputer

                if not os.path.isfile(self.weights):
                    raise CaseError(self.weights, "the missing-sequence imputer's weights are not there")
                try:
                    state = torch.load(self.weights, map_location="cpu", weights_only=True)
                    model = SequenceImputer(3, num_sequences, **imputer_options(state))
                    model.load_state_dict(state)
                except Exception as e:  # unreadable file or weights of another shape
                    raise CaseError(
                        self.weights, f"not the imputer's weights ({str(e).splitlines()[0][:200]})"
                    ) from None
                self._model = model.eval()
            return self._model

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            from scripts.networks.imputer import presence

            img = torch.as_tensor(d[key]).float()
            present = presence(img[None])[0].bool()
            if bool(present.all()) or not bool(present.any()):
                continue
            with torch.no_grad():
                out = self.model(img.shape[0])(img[None])[0]
            for missing, source in self.stand_ins.items():
                if not present[missing] and present[source]:
                    out[missing] = img[source]
            d[key], *_ = convert_to_dst_type(out, d[key], dtype=torch.float32)
        return d


def imputer_options(state: Mapping) -> dict:
    """``SequenceImputer`` widths read back from its ``state_dict``: ``channels`` and ``num_layers``."""
    convs = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 5 and v.shape[-1] > 1]
    return {"channels": int(state[convs[0]].shape[0]), "num_layers": len(convs)}


class MaskOutsideBraind(MapTransform):
    """Set the predictions in ``keys`` to 0 outside the brain of ``image_key`` (a tumour lies inside the brain).

    Runs where the prediction and the image share a grid (before ``Invertd``). Without a zero background, as in
    an image that is not skull-stripped, the brain is the whole image and nothing changes.
    ``pred``: (C, *spatial), ``image``: (M, *spatial) -> ``pred`` of the same shape and type.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        mask = brain_mask(torch.as_tensor(d[self.image_key]))
        for key in self.key_iterator(d):
            if d[key].shape[1:] != mask.shape:
                raise ValueError(
                    f"{key} {shape_str(d[key].shape)} and {self.image_key} grid {shape_str(mask.shape)} differ."
                )
            d[key] = d[key] * mask.to(device=d[key].device, dtype=d[key].dtype)
        return d


class CaseIdToMetad(MapTransform):
    """Put the item's ``case_id`` into the metadata of ``keys`` (``meta["case_id"]``), so ``SaveImaged`` with
    ``scripts.io.case_name_formatter`` names the output ``<case_id>.nii.gz`` after the datalist's case id, not
    after the first image file. Items without a ``case_id`` and values without metadata are left as they are."""

    def __init__(self, keys: KeysCollection, case_id_key: str = "case_id", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.case_id_key = case_id_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        case_id = d.get(self.case_id_key)
        for key in self.key_iterator(d) if case_id else ():
            if hasattr(d[key], "meta"):
                d[key].meta["case_id"] = str(case_id)
        return d


def affines_match(a, b, atol: float = AFFINE_ATOL_MM) -> bool:
    """True when the 4x4 affines ``a`` and ``b`` describe the same grid: every entry within ``atol``
    (``scripts.conventions.AFFINE_ATOL_MM``, absolute)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol))


class SharedGridNibabelReader(NibabelReader):
    """``NibabelReader`` that stacks modality files whose affines match within ``AFFINE_ATOL_MM``
    (:func:`affines_match`) on the first file's affine; MONAI's own reader refuses any difference beyond
    ``numpy.allclose``'s defaults (1e-8 for a zero entry), stricter than scanners write. Affines that differ
    more are left as they are (MONAI then refuses them; ``scripts.data.checks.check_case`` reports them first).

    Thread-safe: MONAI's reader keeps the names of its last ``read`` in ``self.filenames`` and ``get_data`` zips
    the images with them, so when two threads share the reader (``CacheDataset(num_workers=2)`` fills its cache
    with threads running one transform instance) a 1-file read between another thread's 4-file ``read`` and
    ``get_data`` cuts that case to 1 channel. Here ``filenames`` is kept per thread."""

    _per_thread = threading.local()

    @property
    def filenames(self):
        return getattr(self._per_thread, "filenames", {}).get(id(self), ())

    @filenames.setter
    def filenames(self, value) -> None:
        if not hasattr(self._per_thread, "filenames"):
            self._per_thread.filenames = {}
        self._per_thread.filenames[id(self)] = value

    def get_data(self, img):
        images = tuple(img) if isinstance(img, (list, tuple)) else (img,)
        if len(images) > 1:
            first = images[0].affine
            images = tuple(
                type(i)(i.dataobj, first, i.header) if i is not images[0] and affines_match(i.affine, first) else i
                for i in images
            )
        return super().get_data(images if isinstance(img, (list, tuple)) else images[0])


MISSING_KEY = "missing_modalities"
"""Item key that :class:`LoadImageSharedGridd` sets: the missing sequences of the case, comma-joined
(:data:`~scripts.conventions.MODALITIES` names; ``""`` when none is missing)."""


def missing_of(item: Mapping) -> list[str]:
    """The :data:`~scripts.conventions.MODALITIES` names that the item's :data:`MISSING_KEY` entry gives (what
    :class:`LoadImageSharedGridd` recorded; [] when it recorded none or the item never went through it)."""
    return [m for m in str(item.get(MISSING_KEY) or "").split(",") if m]


def missing_modalities(files: Sequence) -> list[int]:
    """Indices of the modality files of a one-file-per-sequence case that do not exist."""
    return [i for i, f in enumerate(files) if not os.path.exists(f)] if len(files) == len(MODALITIES) else []


class LoadImageSharedGridd(LoadImaged):
    """``LoadImaged`` whose NIfTI reader is :class:`SharedGridNibabelReader` (readers still chosen by file
    suffix: DICOM series folders go to ITK as before).

    With ``allow_missing_modalities``, a case given as one file per sequence (T1, T1ce, T2, FLAIR) may lack any of
    them but one: the present files are loaded and every missing sequence becomes an all-zero channel, as the
    network was trained to see it (``RandModalityDropoutd``). A case given as one 4D file (a MONAI Label study,
    MSD Task01) may have all-zero channels: those sequences are missing (the channel's sequence read through the
    item's ``channel_order`` when it has one). The item then names the missing sequences under
    :data:`MISSING_KEY`. A case without any of the four files, or whose every channel is zero, raises
    :class:`CaseError`.
    """

    def __init__(self, *args, allow_missing_modalities: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.allow_missing_modalities = bool(allow_missing_modalities)
        for reader in self._loader.readers:
            if type(reader) is NibabelReader:  # same state, one method more
                reader.__class__ = SharedGridNibabelReader

    def __call__(self, data, reader=None):
        if not self.allow_missing_modalities:
            return super().__call__(data, reader)
        d = dict(data)
        missing = {key: missing_modalities(list(np.atleast_1d(d[key]))) for key in self.key_iterator(d)}
        for key, absent in missing.items():
            if len(absent) == len(MODALITIES):
                raise CaseError(str(d[key][0]), "none of the four sequence files exists (T1, T1ce, T2, FLAIR)")
            d[key] = [f for i, f in enumerate(d[key]) if i not in absent] if absent else d[key]
        d = super().__call__(d, reader)
        for key, absent in missing.items():
            if len(np.atleast_1d(data[key])) == 1:  # one 4D file: its all-zero channels are the missing sequences
                d[MISSING_KEY] = ",".join(_empty_channels(d, key))
            else:
                d[MISSING_KEY] = ",".join(MODALITIES[i] for i in absent)
            if absent:
                img = d[key]
                full = img.new_zeros((len(MODALITIES), *img.shape[1:]))
                full[[i for i in range(len(MODALITIES)) if i not in absent]] = img
                d[key] = full
        return d


def channel_modality(d: Mapping, c: int, order_key: str | None = "channel_order") -> str:
    """The sequence name (:data:`~scripts.conventions.MODALITY_NAMES`) of channel ``c`` of the image of item ``d``
    as loaded: through the item's ``order_key`` (MSD Task01's file order) when it has one, else T1, T1ce, T2,
    FLAIR; ``channel c`` beyond them."""
    order = d.get(order_key) if order_key else None
    try:
        order = None if order is None else _int_list(order, order_key)
    except (TypeError, ValueError):
        order = None
    i = order.index(c) if order is not None and c in order else c
    return MODALITY_NAMES[i] if 0 <= i < len(MODALITY_NAMES) else f"channel {c}"


def _empty_channels(d: Mapping, key: str) -> list[str]:
    """:data:`~scripts.conventions.MODALITIES` names of the all-zero channels of ``d[key]``.

    Raises:
        CaseError: every channel is zero.
    """
    t = torch.as_tensor(d[key])
    flat = t.reshape(t.shape[0], -1)
    zero = [c for c in range(t.shape[0]) if not flat[c].any()]
    if zero and len(zero) == t.shape[0]:
        raise CaseError(source_name(d[key]), "every channel is zero: no sequence to segment")
    names = [channel_modality(d, c) for c in zero]
    return [m for m, name in zip(MODALITIES, MODALITY_NAMES) if name in names]


def _subsample(values: torch.Tensor, max_items: int = 200_000) -> torch.Tensor:
    """``torch.quantile`` refuses inputs above 16M elements; a strided subsample is plenty for percentiles."""
    step = max(1, values.numel() // max_items)
    return values[::step]


# ----------------------------------------------------------------------------------------------
# per-case layout conventions carried by the datalist item (one config for every dataset layout)
# ----------------------------------------------------------------------------------------------
def _int_list(value, name: str) -> list[int]:
    """A datalist field holding a list of ints -> ``list[int]``.

    Accepts what a datalist item holds before and after a ``DataLoader`` round trip: a list/tuple of ints,
    a 1D tensor/array, or a list of 0-d / 1-element tensors (what ``decollate_batch`` gives back for a list
    field collated with batch size 1).
    """
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name}: expected a list of integers, got {value!r}")
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    out = []
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                raise ValueError(f"{name}: expected one integer per entry, got {v!r} (batched item not decollated?)")
            v = v[0]
        out.append(int(v))
    return out


def _item_labels(data: Mapping, labels_key: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """The (necrotic, oedema, enhancing) label values of one item: ``data[labels_key]`` when present."""
    if labels_key is None or data.get(labels_key) is None:
        return default
    labels = tuple(_int_list(data[labels_key], labels_key))
    if len(labels) != 3:
        raise ValueError(f"'{labels_key}' must hold 3 label values (necrotic, oedema, enhancing), got {list(labels)}")
    return labels


class LoadLabeld(MapTransform):
    """``LoadImaged`` (channel first) of the optional label map: loads ``keys`` the item has, skips the others.

    A transform of its own rather than a ``LoadImaged``: MONAI Label's bundle task wraps every ``LoadImaged`` of
    the preprocessing and requires all of its keys, and an inference request carries no label."""

    def __init__(self, keys: KeysCollection = "label", **load_kwargs):
        super().__init__(keys, allow_missing_keys=True)
        load_kwargs.setdefault("ensure_channel_first", True)
        self.loader = LoadImaged(keys, allow_missing_keys=True, **load_kwargs)

    def __call__(self, data: Mapping) -> dict:
        return self.loader(data)


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` that leaves alone the ``<key>_*`` items which are not metadata dicts.

    ``Spacingd`` updates every ``<key>_*`` item of a NIfTI image as a metadata dict; MONAI Label puts the image's
    path in ``image_path`` (a string), which would make it fail."""

    def __call__(self, data: Mapping, lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        kept = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(kept)
        return d


class SelectChannelsd(MapTransform):
    """Reorder (or select) the channels of channel-first images, per item.

    The channel indices come from ``data[order_key]`` when the item has that key (e.g. an MSD Task01 item
    carries ``"channel_order": [1, 2, 3, 0]`` to turn FLAIR, T1w, T1gd, T2w into the bundle's T1, T1ce, T2,
    FLAIR), otherwise from ``order``; with neither it is a no-op, so the same preprocessing serves every
    dataset layout. Output channel ``i`` is input channel ``order[i]``; metadata (affine, applied
    operations) is kept, so ``Invertd`` still works on predictions.
    """

    def __init__(
        self,
        keys: KeysCollection,
        order_key: str | None = "channel_order",
        order: Sequence[int] | None = None,
        allow_missing_keys=False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.order_key = order_key
        self.order = None if order is None else [int(v) for v in order]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        order = self.order
        if self.order_key is not None and d.get(self.order_key) is not None:
            order = _int_list(d[self.order_key], self.order_key)
        if order is None:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            n = img.shape[0]
            if any(not -n <= c < n for c in order):
                raise ValueError(f"{source_name(img)}: channel order {order} is out of range for {n} channels")
            if list(order) == list(range(n)):
                continue
            d[key] = img[list(order)]
        return d


# ----------------------------------------------------------------------------------------------
# data checks (the bad-input handling around them is in scripts.data.checks)
# ----------------------------------------------------------------------------------------------
class CaseError(ValueError):
    """A case that cannot be used: ``path`` is the file at fault, ``problem`` what is wrong with it.

    ``case_id`` names the case when known; ``channel`` is the image channel at fault for data-level problems
    (a :class:`CheckedDataset` turns it into the modality file of a multi-file case)."""

    def __init__(self, path, problem: str, case_id: str | None = None, channel: int | None = None):
        self.path, self.problem, self.case_id, self.channel = str(path), problem, case_id, channel
        prefix = f"case {case_id}: " if case_id else ""
        super().__init__(f"{prefix}{path}: {problem}")


def shape_str(shape) -> str:
    """``(240, 240, 155)`` for messages."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class CheckImageDatad(MapTransform):
    """Data-level checks, right after ``LoadImaged`` (before any channel reordering): every image of ``keys``
    is channel-first with ``channels`` channels and 3 spatial dims, and has no NaN/Inf voxel and no all-zero
    channel; every array of ``finite_keys`` (label maps) has no NaN/Inf voxel. Raises :class:`CaseError`
    naming the file (``channel`` set for channel problems) and leaves the data unchanged otherwise.

    Channel ``c`` is reported as the bundle modality it becomes: ``channel_order`` of the item when it has
    one (MSD Task01), else channel ``c`` of T1, T1ce, T2, FLAIR.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        channels: int | None = 4,
        finite_keys: KeysCollection = ("label",),
        order_key: str | None = "channel_order",
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.finite_keys = [finite_keys] if isinstance(finite_keys, str) else list(finite_keys or ())
        self.order_key = order_key

    def _modality(self, d: Mapping, c: int) -> str:
        return channel_modality(d, c, self.order_key)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = source_name(img)
            t = torch.as_tensor(img)
            if t.ndim != 4 or (self.channels and t.shape[0] != self.channels):
                raise CaseError(
                    name, f"expected {self.channels or 'C'} channels of a 3D image, got shape {shape_str(t.shape)}"
                )
            flat = t.reshape(t.shape[0], -1)
            if flat.is_floating_point():
                for c in (~torch.isfinite(flat).all(1)).nonzero().flatten().tolist()[:1]:
                    nan, inf = int(torch.isnan(flat[c]).sum()), int(torch.isinf(flat[c]).sum())
                    raise CaseError(name, f"{self._modality(d, c)}: {nan} NaN and {inf} Inf voxel(s)", channel=c)
            absent = {MODALITY_NAMES[MODALITIES.index(m)] for m in missing_of(d)}
            low, high = flat.amin(1), flat.amax(1)
            for c in range(t.shape[0]):
                if self._modality(d, c) in absent:
                    continue
                if high[c] == low[c] == 0:
                    raise CaseError(name, f"{self._modality(d, c)}: all voxels are zero (empty image)", channel=c)
                if high[c] == low[c]:
                    value = f"{float(low[c]):.6g}"
                    raise CaseError(name, f"{self._modality(d, c)}: every voxel is {value} (constant image)", channel=c)
        for key in self.finite_keys:
            if key not in d or d[key] is None or isinstance(d[key], (str, bytes, os.PathLike)):
                continue
            t = torch.as_tensor(d[key])
            if t.is_floating_point():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise CaseError(source_name(d[key]), f"{bad} NaN/Inf voxel(s) in the label map")
                problem = non_integer_labels(t)
                if problem:
                    raise CaseError(source_name(d[key]), problem)
        return d


__all__ = [
    "CaseError",
    "CheckImageDatad",
    "LoadLabeld",
    "PathSafeSpacingd",
    "BrainHistogramEqualized",
    "BrainNormalized",
    "LabelConversiond",
    "LabelToRegionsd",
    "MaskOutsideBraind",
    "NestRegionsd",
    "RegionsToLabeld",
    "SelectChannelsd",
    "brain_mask",
    "label_to_regions",
    "nested",
    "non_integer_labels",
    "regions_to_label",
    "source_name",
]
