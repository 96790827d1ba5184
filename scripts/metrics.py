"""Region metrics on top of MONAI's: HD95 in millimetres whatever the voxel spacing."""

from __future__ import annotations

from collections.abc import Callable

from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric
from monai.utils import MetricReduction


class SpacingAwareHausdorffDistanceMetric(HausdorffDistanceMetric):
    """``HausdorffDistanceMetric`` that reads the voxel spacing from the prediction's metadata (MetaTensor
    affine) when none is passed, so distances come out in millimetres rather than voxels."""

    def _compute_tensor(self, y_pred, y, **kwargs):
        if kwargs.get("spacing") is None and isinstance(y_pred, MetaTensor):
            kwargs["spacing"] = [float(s) for s in y_pred.pixdim]
        return super()._compute_tensor(y_pred, y, **kwargs)


class HD95(IgniteMetricHandler):
    """Ignite handler: 95th-percentile Hausdorff distance in mm between binary prediction and label.

    Inputs from ``output_transform``: (B, C, *spatial) binarised prediction and label, MetaTensors carrying
    their affine. Cases where the structure is empty in the prediction or the label give NaN and are left
    out of the mean.
    """

    def __init__(
        self,
        include_background: bool = True,
        percentile: float = 95.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = SpacingAwareHausdorffDistanceMetric(
            include_background=include_background, percentile=percentile, reduction=reduction
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
