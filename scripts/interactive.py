"""DeepEdit-style interactive segmentation with this bundle's ResUNet: the parts MONAI lacks.

The interactive model (``configs/deepedit_train.json``, ``configs/deepedit_inference.json``) is the same
``scripts.networks.ResUNet`` with

* input: ``number_intensity_ch`` = 4 intensity channels (T1, T1ce, T2, FLAIR, preprocessed exactly as for the
  automatic model) followed by one guidance channel per label name (in ``label_names`` order, background
  included): ``(4 + len(label_names), H, W, D)``. A guidance channel is 0 everywhere except for a Gaussian
  blob (sigma ``sigma`` voxels, peak 1) around each click of that label; all guidance channels 0 means
  "no clicks", i.e. automatic segmentation;
* output: ``len(label_names)`` mutually exclusive classes (softmax), ``(len(label_names), H, W, D)``, with the
  class indices of ``scripts.conventions.LABEL_NAMES``. The BraTS label values of a case (1/2/4 for BraTS 2017-2020, 1/2/3 for
  BraTS 2023, 2/1/3 for MSD, the item's ``labels`` field, see :mod:`scripts.transforms`) are mapped to these
  consecutive indices for training (:class:`BratsToClassesd`) and back for the written label map
  (:class:`ClassesToBratsd`).

MONAI's deepedit transforms and ``Interaction`` are used as they are where they fit; the subclasses here fix
their single-intensity-channel assumptions and two bugs that matter with random patches:

* :class:`Interaction`: MONAI's ``Interaction`` zeroes image channels ``1..`` of the first batch item when no
  clicks are simulated (one intensity channel assumed); here channels ``number_intensity_ch..`` of every item.
* :class:`AddGuidanceSignald`: MONAI's ``AddGuidanceSignalDeepEditd`` with the guidance channels always in
  ``label_names`` order (a label without clicks gets a zero channel), the image kept a ``MetaTensor``, and the
  guidance stored back as JSON strings (click lists of different lengths cannot be collated into a batch).
* :class:`AddRandomGuidanced`: MONAI's ``AddRandomGuidanceDeepEditd`` replaces an item's clicks with those of the
  previous item when it decides not to add any; here the item keeps its own.

Clicks from a user (MONAI Label, 3D Slicer, OHIF, or a datalist item) are voxel indices ``[i, j, k]`` of the
image grid as loaded, before reorientation, resampling and cropping. :class:`ClicksToWorldd`, right after
loading, turns them into world coordinates (mm) with the loaded image's affine; :class:`ClicksToGuidanced`, at
the end of the preprocessing, maps them into the preprocessed grid with the inverse of the image's current
affine. Every spatial preprocessing step (``Orientationd``, ``Spacingd``, ``CropForegroundd``) keeps the
image's affine up to date, so a click lands on the voxel that shows the same point of the head, whatever the
orientation, voxel size or crop (no shape-ratio rescaling as in MONAI's ``ResizeGuidanceMultipleLabelDeepEditd``,
which misplaces clicks after a crop). Clicks outside the preprocessed grid (e.g. a background click outside the
brain's bounding box) are dropped with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from enum import Enum

import numpy as np
import torch
from monai.apps.deepedit.interaction import Interaction as _MonaiInteraction
from monai.apps.deepedit.transforms import (
    AddGuidanceSignalDeepEditd,
    AddInitialSeedPointMissingLabelsd,
    AddRandomGuidanceDeepEditd,
)
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage as ndi

from scripts.conventions import BRATS2020_LABELS, LABEL_NAMES, MODALITIES
from scripts.handlers import read_weights
from scripts.transforms import LabelConversiond, LabelToRegionsd, non_integer_labels, source_name

logger = logging.getLogger(__name__)
# MONAI's deepedit transforms log "Not slice IDs for label: ..." for every label of every 3D patch: nothing a user
# can act on, and thousands of lines per training run
logging.getLogger("monai.apps.deepedit.transforms").setLevel(logging.WARNING)

NUMBER_INTENSITY_CH = len(MODALITIES)
"""T1, T1ce, T2, FLAIR."""
WORLD_CLICKS_KEY = "clicks_world"
"""Where :class:`ClicksToWorldd` leaves the clicks (world mm) for :class:`ClicksToGuidanced`."""


# ---------------------------------------------------------------------------------------------- labels
def _check_values(label: torch.Tensor, labels: Sequence[int]) -> None:
    if label.shape[0] != 1:
        raise ValueError(f"{source_name(label)}: expected a single-channel label map, got shape {tuple(label.shape)}")
    problem = non_integer_labels(label)
    if problem:
        raise ValueError(f"{source_name(label)}: {problem}")
    unexpected = sorted(set(int(v) for v in torch.unique(label).tolist()) - {0, *labels})
    if unexpected:
        raise ValueError(
            f"{source_name(label)}: label values {unexpected} are outside the expected set {[0, *labels]} "
            f"(necrotic, oedema, enhancing = {list(labels)})"
        )


def brats_to_classes(label: torch.Tensor, labels: Sequence[int] = BRATS2020_LABELS) -> torch.Tensor:
    """BraTS label map (1, *spatial) with values ``{0} | labels`` -> float class indices (1, *spatial):
    0 background, 1 necrotic core (``labels[0]``), 2 oedema (``labels[1]``), 3 enhancing (``labels[2]``).
    Raises ``ValueError`` naming the file for other values."""
    _check_values(label, labels)
    out = torch.zeros(label.shape, dtype=torch.float32, device=label.device)
    for index, value in enumerate(labels, start=1):
        out[label == value] = index
    return out


def classes_to_brats(classes: torch.Tensor, labels: Sequence[int] = BRATS2020_LABELS) -> torch.Tensor:
    """Class indices (1, *spatial) in 0..3 -> uint8 BraTS label map (1, *spatial) with values ``{0} | labels``."""
    if classes.shape[0] != 1:
        raise ValueError(f"expected a single-channel class map, got shape {tuple(classes.shape)}")
    lut = torch.tensor([0, *labels], dtype=torch.uint8, device=classes.device)
    return lut[classes.round().long().clamp(0, len(labels))]


def classes_to_regions(classes: torch.Tensor) -> torch.Tensor:
    """Class map -> float region channels (3, *spatial) TC, WT, ET (as :func:`scripts.transforms.label_to_regions`).

    ``classes``: (1, *spatial) class indices 0..3, or (C, *spatial) class scores / one-hot (argmax taken)."""
    lab = classes[0].round().long() if classes.shape[0] == 1 else classes.argmax(0)
    tc = (lab == 1) | (lab == 3)
    return torch.stack([tc, tc | (lab == 2), lab == 3]).float()


class BratsToClassesd(LabelConversiond):
    """Dictionary transform: BraTS label map -> class indices (1, *spatial), see :func:`brats_to_classes`, with
    the item's own label convention when it has ``labels_key``. Also sets ``data["label_names"]`` (what MONAI's
    deepedit transforms read) to ``label_names``, on items without a label too."""

    convert = staticmethod(brats_to_classes)
    dtype = torch.float32

    def __init__(
        self,
        keys: KeysCollection,
        labels=BRATS2020_LABELS,
        labels_key=None,
        label_names=None,
        allow_missing_keys=False,
    ):
        super().__init__(keys, labels, labels_key, allow_missing_keys)
        self.label_names = dict(label_names or LABEL_NAMES)

    def __call__(self, data):
        d = super().__call__(data)
        d["label_names"] = dict(self.label_names)
        return d


class ClassesToBratsd(LabelConversiond):
    """Dictionary transform: class indices (1, *spatial) -> uint8 BraTS label map in the item's convention,
    see :func:`classes_to_brats`."""

    convert = staticmethod(classes_to_brats)
    dtype = torch.uint8


class ClassesToRegionsd(MapTransform):
    """Dictionary transform: class map (class indices or scores) -> 3 region channels TC, WT, ET, see
    :func:`classes_to_regions` (for the validation metrics shared with the automatic model)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], *_ = convert_to_dst_type(classes_to_regions(torch.as_tensor(d[key])), d[key], dtype=torch.float32)
        return d


def with_click_transforms(transforms: Sequence, label_names: Mapping[str, int] | None = None) -> list:
    """The automatic model's preprocessing turned into the interactive model's: :class:`ClicksToWorldd` right
    after the loader (the first transform) and every ``LabelToRegionsd`` replaced by a :class:`BratsToClassesd`
    with the same keys and label convention. ``transforms``: the instantiated list (``@preprocessing_transforms``)."""
    transforms = list(transforms)
    if not transforms:
        raise ValueError("expected the preprocessing transforms, starting with the loader")
    out = [transforms[0], ClicksToWorldd(label_names=label_names)]
    for t in transforms[1:]:
        if isinstance(t, LabelToRegionsd):
            t = BratsToClassesd(t.keys, t.labels, t.labels_key, label_names, t.allow_missing_keys)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------------- clicks
def _as_points(value, name: str) -> list[list[float]]:
    """User clicks of one label -> ``[[i, j, k], ...]``: accepts None, a JSON string, one point, a list of
    points, arrays/tensors (N, 3). Points with 4 values (MONAI's ``[extra, i, j, k]``) keep the last three."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        value = json.loads(value) if value.strip() else []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        if isinstance(value, (list, tuple)):
            return []
        raise ValueError(f"clicks of '{name}': expected points [i, j, k], got {value!r}")
    if not isinstance(value[0], (list, tuple)) and not hasattr(value[0], "tolist"):
        value = [value]  # one point
    points = []
    for p in value:
        p = p.tolist() if hasattr(p, "tolist") else p
        if not isinstance(p, (list, tuple)) or len(p) not in (3, 4):
            raise ValueError(f"clicks of '{name}': expected points [i, j, k], got {value!r}")
        points.append([float(v) for v in p[-3:]])
    return points


def _affine(img) -> np.ndarray:
    if not isinstance(img, MetaTensor):
        raise TypeError(f"clicks need the image as a MetaTensor (with its affine), got {type(img).__name__}")
    return np.asarray(img.affine, dtype=float)


class ClicksToWorldd(Transform):
    """Right after loading: user clicks (voxel indices of the loaded image) -> world coordinates (mm).

    Reads ``data[name]`` for every label name (a list of ``[i, j, k]``, see :func:`_as_points`; absent, None
    or empty = no clicks) and stores ``data[output_key] = {name: [[x, y, z], ...]}`` computed with the affine of
    ``data[ref_image]`` (its ``(C, I, J, K)`` array as loaded). The click keys themselves are left as given.
    """

    def __init__(
        self, label_names: Mapping[str, int] | None = None, ref_image: str = "image", output_key: str = WORLD_CLICKS_KEY
    ):
        self.label_names = dict(label_names or LABEL_NAMES)
        self.ref_image, self.output_key = ref_image, output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        affine = None
        world = {}
        for name in self.label_names:
            points = _as_points(d.get(name), name)
            if points and affine is None:
                affine = _affine(d[self.ref_image])
            world[name] = [(affine @ np.array([*p, 1.0]))[:3].tolist() for p in points] if points else []
        if any(world.values()):
            d[self.output_key] = world
        return d


class ClicksToGuidanced(Transform):
    """At the end of the preprocessing: clicks in world coordinates (from :class:`ClicksToWorldd`) -> voxel
    indices ``[i, j, k]`` of the preprocessed ``data[ref_image]`` (inverse of its current affine, rounded).

    Stores ``data[guidance] = {name: [[i, j, k], ...]}`` for every label name in ``label_names`` order (empty
    list = no clicks of that label) and removes ``data[input_key]``. Clicks outside the grid are dropped with a
    warning."""

    def __init__(
        self,
        label_names: Mapping[str, int] | None = None,
        ref_image: str = "image",
        guidance: str = "guidance",
        input_key: str = WORLD_CLICKS_KEY,
    ):
        self.label_names = dict(label_names or LABEL_NAMES)
        self.ref_image, self.guidance, self.input_key = ref_image, guidance, input_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        world = d.pop(self.input_key, None) or {}
        img = d[self.ref_image]
        shape = np.asarray(img.shape[1:])
        inverse = None
        guidance = {}
        for name in self.label_names:
            points = []
            for p in world.get(name) or []:
                if inverse is None:
                    inverse = np.linalg.inv(_affine(img))
                v = np.rint((inverse @ np.array([*p, 1.0]))[:3]).astype(int)
                if np.all(v >= 0) and np.all(v < shape):
                    points.append(v.tolist())
                else:
                    logger.warning(
                        f"{source_name(img)}: '{name}' click at {np.round(p, 1).tolist()} mm is outside the "
                        f"preprocessed image (voxel {v.tolist()}, shape {shape.tolist()}); ignored"
                    )
            guidance[name] = points
        d[self.guidance] = guidance
        return d


# ---------------------------------------------------------------------------------------------- guidance
class AddGuidanceSignald(AddGuidanceSignalDeepEditd):
    """MONAI's ``AddGuidanceSignalDeepEditd`` for multi-channel images.

    ``data["image"]``: (C, H, W, D) with C >= ``number_intensity_ch``; only its first ``number_intensity_ch``
    channels are kept, and one guidance channel per label name is appended (Gaussian blobs of ``sigma`` voxels
    around the clicks of ``data[guidance][name]``, normalised to peak 1; zeros without clicks), in
    ``label_names`` order (the keys of ``data[guidance]`` when ``label_names`` is None): the output is
    ``(number_intensity_ch + len(label_names), H, W, D)``, float32, a ``MetaTensor`` when the input was one.
    ``data[guidance]`` is stored back as ``{name: JSON string of [[i, j, k], ...]}``, which collates into
    batches whatever the number of clicks (MONAI's deepedit transforms parse JSON strings).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        guidance: str = "guidance",
        sigma: float = 3,
        number_intensity_ch: int = NUMBER_INTENSITY_CH,
        label_names: Mapping[str, int] | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, guidance, sigma, number_intensity_ch, allow_missing_keys)
        self.label_names = None if label_names is None else dict(label_names)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        guidance = d.get(self.guidance) or {}
        names = list(self.label_names) if self.label_names is not None else list(guidance)
        clean = {
            name: [[int(round(float(v))) for v in p[-3:]] for p in _as_points(guidance.get(name), name) if min(p) >= 0]
            for name in names
        }
        for key in self.key_iterator(d):
            img = d[key]
            t = torch.as_tensor(img)
            if t.shape[0] < self.number_intensity_ch:
                raise ValueError(f"expected at least {self.number_intensity_ch} intensity channels, got {t.shape[0]}")
            signals = [torch.as_tensor(self._get_signal(t, clean[name]), device=t.device) for name in names]
            out = (
                torch.cat([t[: self.number_intensity_ch].float(), *signals], 0)
                if signals
                else t[: self.number_intensity_ch].float()
            )
            d[key], *_ = convert_to_dst_type(out, img, dtype=torch.float32)
        d[self.guidance] = {name: json.dumps(clean[name]) for name in names}
        return d


class AddInitialClicksd(AddInitialSeedPointMissingLabelsd):
    """MONAI's ``AddInitialSeedPointMissingLabelsd`` in its 3D mode: one simulated first click per label name,
    drawn inside the label's 3D region with a preference for its interior (probability ``exp(distance to the
    border) - 1``), ``[-1, -1, -1, -1]`` for a label absent from the (patch's) label map.

    ``data["label"]``: class indices (1, H, W, D); ``data["label_names"]``: name -> class index (set by
    :class:`BratsToClassesd`). Stores ``data[guidance] = {name: JSON string of [[distance, i, j, k]]}``.
    MONAI's 2D mode (clicks on one slice per label, found by ``FindAllValidSlicesMissingLabelsd``) needs
    scikit-image and suits a slice-by-slice tool; a 3D click per label is what a 3D viewer gives.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.sids_key] = {name: [] for name in d["label_names"]}  # no slice ids: 3D seeds
        d = super().__call__(d)
        d.pop(self.sids_key, None)
        return d


class AddRandomGuidanced(AddRandomGuidanceDeepEditd):
    """MONAI's ``AddRandomGuidanceDeepEditd`` (corrective clicks drawn in the prediction's error regions), except
    that an item for which it decides not to click keeps its own clicks (MONAI's returns the previous item's)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        own = data.get(self.guidance_key)
        d = super().__call__(data)
        if not self._will_interact:
            d[self.guidance_key] = own
        else:
            d[self.guidance_key] = {
                k: [[int(v) for v in p] for p in pts if p is not None] for k, pts in self.guidance.items()
            }
            self.guidance = {}
        return d


def _plain_keys(data: Mapping) -> dict:
    """The dict with enum keys (``CommonKeys.PRED``) replaced by their string values (``"pred"``)."""
    return {(k.value if isinstance(k, Enum) else k): v for k, v in data.items()}


class Interaction(_MonaiInteraction):
    """MONAI's deepedit ``Interaction`` (ignite ``iteration_update``: with probability ``deepgrow_probability``
    up to ``max_interactions`` rounds of predict -> simulated corrective clicks -> new guidance, before the
    iteration), for images with ``number_intensity_ch`` intensity channels.

    Without simulated clicks MONAI's version zeroes image channels ``1..`` of the first batch item; this one
    zeroes the guidance channels ``number_intensity_ch..`` of every item (automatic-segmentation mode) and never
    touches the intensity channels. ``batchdata["image"]``: (B, number_intensity_ch + guidance, H, W, D).
    """

    def __init__(
        self,
        deepgrow_probability: float,
        transforms,
        train: bool,
        label_names=None,
        click_probability_key: str = "probability",
        max_interactions: int = 1,
        number_intensity_ch: int = NUMBER_INTENSITY_CH,
    ):
        super().__init__(deepgrow_probability, transforms, train, label_names, click_probability_key, max_interactions)
        self.number_intensity_ch = number_intensity_ch
        # MONAI's loop stores the prediction under the enum CommonKeys.PRED, whose hash is not that of "pred" on
        # Python 3.11+: the click transforms would not find data["pred"]
        self.transforms = Compose([_plain_keys, *self.transforms.transforms])

    def __call__(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        p = float(self.deepgrow_probability)
        if np.random.choice([True, False], p=[p, 1.0 - p]):
            saved = self.deepgrow_probability
            self.deepgrow_probability = 1.0  # the draw is done: MONAI's branch with clicks
            try:
                return super().__call__(engine, batchdata)
            finally:
                self.deepgrow_probability = saved
        batchdata = dict(batchdata)
        image = batchdata["image"].clone()
        image[:, self.number_intensity_ch :] = 0
        batchdata["image"] = image
        engine.state.batch = batchdata
        return engine._iteration(engine, batchdata)


# ---------------------------------------------------------------------------------------------- evaluation
def largest_error_click(
    pred: np.ndarray, label: np.ndarray, label_names: Mapping[str, int] | None = None, only: str | None = None
):
    """One simulated corrective click: in the largest connected error region, where the reference is class
    ``c`` but the prediction is not, at its most interior voxel (largest distance to the region's border).

    ``pred``, ``label``: class-index arrays of the same spatial shape (an extra leading channel of 1 is
    ignored); ``only``: a label name to click for (default: whichever class has the largest error region).
    Returns ``(name, [i, j, k])`` with the label name of ``c``, or ``None`` when there is no error.
    """
    names = dict(label_names or LABEL_NAMES)
    if only is not None:
        names = {only: names[only]}
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.ndim == 4:
        pred = pred[0]
    if label.ndim == 4:
        label = label[0]
    best = None
    for name, c in names.items():
        errors = (label == c) & (pred != c)
        if not errors.any():
            continue
        components, n = ndi.label(errors)
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), name, components == k)
    if best is None:
        return None
    _, name, region = best
    distance = ndi.distance_transform_edt(region)
    return name, [int(v) for v in np.unravel_index(int(np.argmax(distance)), region.shape)]


__all__ = [
    "LABEL_NAMES",
    "NUMBER_INTENSITY_CH",
    "AddGuidanceSignald",
    "AddInitialClicksd",
    "AddRandomGuidanced",
    "BratsToClassesd",
    "ClassesToBratsd",
    "ClassesToRegionsd",
    "ClicksToGuidanced",
    "ClicksToWorldd",
    "Interaction",
    "brats_to_classes",
    "classes_to_brats",
    "classes_to_regions",
    "largest_error_click",
    "with_click_transforms",
]


def region_head_to_classes(weight: torch.Tensor, bias: torch.Tensor, label_names: Mapping[str, int] | None = None):
    """The automatic model's head (one sigmoid logit per region, ``REGIONS`` order TC, WT, ET) as a softmax head
    over the classes of ``label_names``: background 0, oedema ``w``, necrotic core ``w + t``, enhancing tumour
    ``w + t + e`` (``t``, ``w``, ``e``: the region logits). The class with the largest logit is then the one the
    thresholded regions give wherever the regions nest (ET inside TC inside WT), so a model started from these
    weights segments like the automatic model before it has seen a click.

    Args:
        weight: ``(3, C, 1, 1, 1)`` head weights of the automatic model.
        bias: ``(3,)`` head bias.
        label_names: class name -> output channel (default ``LABEL_NAMES``).

    Returns:
        ``(len(label_names), C, 1, 1, 1)`` weights and ``(len(label_names),)`` bias.
    """
    names = dict(LABEL_NAMES if label_names is None else label_names)
    tc, wt, et = 0, 1, 2
    rows = {
        "background": [],
        "edema": [wt],
        "necrotic_core": [wt, tc],
        "enhancing_tumor": [wt, tc, et],
    }
    if set(names) != set(rows):
        raise ValueError(f"label_names {sorted(names)}: a region head maps only to {sorted(rows)}")
    new_w = weight.new_zeros((len(names), *weight.shape[1:]))
    new_b = bias.new_zeros(len(names))
    for name, members in rows.items():
        for m in members:
            new_w[names[name]] += weight[m]
            new_b[names[name]] += bias[m]
    return new_w, new_b


def warm_start(network: torch.nn.Module, path, label_names: Mapping[str, int] | None = None) -> torch.nn.Module:
    """Start the interactive ``network`` from the automatic model's weights ``path`` (``models/model.pt``): every
    layer is copied; the first layer's guidance input channels start at 0 (no click changes anything yet) and
    the region head becomes a class head (:func:`region_head_to_classes`). Training then only has to learn what
    clicks mean. ``path`` ``None``: ``network`` as it is (random weights). Returns ``network``.

    Raises:
        CheckpointError: the file does not exist or cannot be read (:func:`scripts.handlers.read_weights`).
        ValueError: the weights are not those of an automatic model of this shape (names the first misfit).
    """
    if path is None:
        return network
    hint = "the interactive model starts from the automatic model's weights: pass --warm_start_ckpt PATH"
    state = read_weights(path, "cpu", hint + ", or --warm_start_ckpt none to start from random weights")
    own = network.state_dict()
    new = {}
    for key, target in own.items():
        if key not in state:
            raise ValueError(f"{path}: no {key}; not the automatic model's weights for this network")
        source = state[key]
        if key == "head.weight":
            source, new["head.bias"] = region_head_to_classes(state["head.weight"], state["head.bias"], label_names)
        elif key == "head.bias":
            continue
        elif source.ndim == 5 and source.shape[1] < target.shape[1] and source.shape[0] == target.shape[0]:
            source = torch.cat(
                [source, source.new_zeros((source.shape[0], target.shape[1] - source.shape[1], *source.shape[2:]))], 1
            )
        if source.shape != target.shape:
            raise ValueError(f"{path}: {key} has shape {list(source.shape)}, the network {list(target.shape)}")
        new[key] = source
    network.load_state_dict(new)
    logger.info("interactive model started from the automatic model %s (guidance inputs at 0)", path)
    return network
